package govern

import (
	"testing"

	"github.com/writ-dev/writ/shim"
)

// BenchmarkGovernedExec is the cost of an exec of /bin/true: plain (no
// guard), outside the governed cgroups with every filesystem marked, and
// in a governed cgroup from a sealed copy let through once (AllowOnce
// counted). x-plain is each as a ratio to plain exec. The guard answers
// from a process of its own (issue 12: from this one, which forks the
// children with vfork, it deadlocked under a garbage collection).
func BenchmarkGovernedExec(b *testing.B) {
	requireFanotify(b)
	var plain float64
	ratio := func(b *testing.B) {
		if plain > 0 {
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/plain, "x-plain")
		}
	}
	b.Run("plain", func(b *testing.B) {
		for b.Loop() {
			if err := run(b, "", "/bin/true", nil); err != nil {
				b.Fatal(err)
			}
		}
		plain = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		b.ReportMetric(1, "x-plain")
	})
	cg, dir := newCgroup(b)
	// The same exec placed in a cgroup by clone3 (as the governed one is),
	// before any guard: the part of the governed figure that is the
	// kernel's, not the guard's.
	b.Run("cgroup-unguarded", func(b *testing.B) {
		for b.Loop() {
			if err := run(b, dir, "/bin/true", nil); err != nil {
				b.Fatal(err)
			}
		}
		ratio(b)
	})
	// The sealed copy exec'd through /proc/self/fd in that cgroup, still
	// with no guard: what governed-sealed adds beyond this is the guard's.
	b.Run("sealed-unguarded", func(b *testing.B) {
		p, err := shim.OpenProgram("/bin/true")
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		for b.Loop() {
			if err := run(b, dir, "/proc/self/fd/3", []string{"true"}, p.Exe.File); err != nil {
				b.Fatal(err)
			}
		}
		ratio(b)
	})
	g, _ := startGuard(b, Config{Cgroups: []string{cg}, Loaders: []string{loader(b)}})
	b.Run("marked-ungoverned", func(b *testing.B) {
		for b.Loop() {
			if err := run(b, "", "/bin/true", nil); err != nil {
				b.Fatal(err)
			}
		}
		ratio(b)
	})
	b.Run("governed-sealed", func(b *testing.B) {
		p, err := shim.OpenProgram("/bin/true")
		if err != nil {
			b.Fatal(err)
		}
		defer p.Close()
		for b.Loop() {
			if err := g.AllowOnce(p.Exe.File); err != nil {
				b.Fatal(err)
			}
			if err := run(b, dir, "/proc/self/fd/3", []string{"true"}, p.Exe.File); err != nil {
				b.Fatal(err)
			}
		}
		ratio(b)
	})
}
