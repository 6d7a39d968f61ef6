package broker

import (
	"context"
	"fmt"

	"github.com/writ-dev/writ/broker/store"
)

// OpenStore opens the database a broker's configuration names (after
// LoadConfig or New has set its defaults): SQLite (the default, in
// DATA_DIR) or PostgreSQL. Errors name a PostgreSQL database without
// its password.
func OpenStore(ctx context.Context, c StoreConfig) (*store.DB, error) {
	switch c.Driver {
	case "sqlite", "":
		if c.DSN == "" {
			return nil, fmt.Errorf("broker: store: no SQLite database path")
		}
		return store.OpenSQLite(c.DSN)
	case "postgres":
		return store.OpenPostgres(ctx, c.DSN)
	}
	return nil, fmt.Errorf("broker: store.driver: %q: want sqlite or postgres", c.Driver)
}
