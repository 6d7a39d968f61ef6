package main

import (
	"bufio"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

// machine describes where the benchmarks ran.
type machine struct {
	CPU, Kernel, Go, Date string
	Cores                 int
}

// describeMachine reads the CPU model from /proc/cpuinfo, the kernel from
// uname and the Go version from the go command that ran the benchmarks.
func describeMachine(now time.Time) machine {
	m := machine{CPU: "unknown", Kernel: "unknown", Go: runtime.Version(), Cores: runtime.NumCPU(), Date: now.UTC().Format(time.RFC3339)}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
		_ = f.Close()
	}
	if out, err := exec.Command("uname", "-srm").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if out, err := exec.Command("go", "version").Output(); err == nil {
		m.Go = strings.TrimSpace(string(out))
	}
	return m
}
