package shim

import (
	"os"
	"os/exec"
	"slices"

	"github.com/writ-dev/writ/artifact"
)

// Command is what argv asks to run, before anything is opened: the
// executable as found in PATH, the working directory, and the environment
// variables passed on.
type Command struct {
	Argv []string
	Path string            // argv[0], looked up in PATH
	Cwd  string            // this process's working directory
	Env  map[string]string // the listed variables that are set, and their values
	// EnvList is Env as NAME=value, in the order the names were listed:
	// the command's whole environment.
	EnvList []string
}

// Find resolves argv and picks the variables envAllow lists from this
// process's environment. In order: argv[0] found (exec_not_found); no
// loader or interpreter variable (artifact.DangerousEnv) in envAllow
// unless dangerous names it too (env_dangerous); the working directory
// (internal_error).
func Find(argv, envAllow, dangerous []string) (*Command, error) {
	if len(argv) == 0 || argv[0] == "" {
		return nil, Deny(ReasonInternal, nil, "no command")
	}
	path, err := exec.LookPath(argv[0])
	if err != nil {
		return nil, Deny(ReasonExecNotFound, err, "%v", err)
	}
	for _, name := range envAllow {
		if err := CheckEnv(name, dangerous); err != nil {
			return nil, err
		}
	}
	cwd, err := os.Getwd()
	if err != nil {
		return nil, Deny(ReasonInternal, err, "working directory: %v", err)
	}
	c := &Command{Argv: argv, Path: path, Cwd: cwd, Env: map[string]string{}}
	for _, name := range envAllow {
		if v, ok := os.LookupEnv(name); ok {
			c.Env[name] = v
			c.EnvList = append(c.EnvList, name+"="+v)
		}
	}
	return c, nil
}

// CheckEnv refuses name if it is a loader or interpreter variable
// (artifact.DangerousEnv) that allowed does not list (env_dangerous).
func CheckEnv(name string, allowed []string) error {
	if artifact.DangerousEnv(name) && !slices.Contains(allowed, name) {
		return Deny(ReasonEnvDangerous, nil,
			"%s is a loader or interpreter variable: pass --allow-dangerous-env %s too, and a rule must name it", name, name)
	}
	return nil
}
