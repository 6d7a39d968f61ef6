package artifact

import "strings"

// dangerousEnvNames are environment variables that make a dynamic loader,
// libc or an interpreter load or run code or files the action does not
// name: glibc's list of variables it drops for set-user-ID programs
// (UNSECURE_ENVVARS, TMPDIR included), and the start-up variables of
// common shells and interpreters.
var dangerousEnvNames = map[string]bool{
	"GCONV_PATH": true, "GETCONF_DIR": true, "GLIBC_TUNABLES": true, "HOSTALIASES": true,
	"LOCALDOMAIN": true, "LOCPATH": true, "NIS_PATH": true, "NLSPATH": true,
	"RESOLV_HOST_CONF": true, "RES_OPTIONS": true, "TMPDIR": true, "TZDIR": true,
	"BASH_ENV": true, "ENV": true, "IFS": true, "SHELLOPTS": true, "BASHOPTS": true,
	"PS4": true, "PROMPT_COMMAND": true, "CDPATH": true,
	"PERLLIB": true, "RUBYOPT": true, "RUBYLIB": true, "NODE_OPTIONS": true, "NODE_PATH": true,
	"JAVA_TOOL_OPTIONS": true, "_JAVA_OPTIONS": true, "JDK_JAVA_OPTIONS": true, "CLASSPATH": true,
	"LUA_INIT": true, "LUA_PATH": true, "LUA_CPATH": true, "PHPRC": true, "PHP_INI_SCAN_DIR": true,
}

// dangerousEnvPrefixes are prefixes of whole families of such variables:
// the loader's (LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT, …), malloc's,
// Python's and Perl's, and bash's exported functions (BASH_FUNC_name%%).
var dangerousEnvPrefixes = []string{"LD_", "MALLOC_", "PYTHON", "PERL5", "BASH_FUNC_"}

// DangerousEnv reports whether the environment variable name lets whoever
// sets it change what the action runs (a loader, libc or interpreter
// variable). Such variables are refused unless a rule names them.
func DangerousEnv(name string) bool {
	if dangerousEnvNames[name] {
		return true
	}
	for _, p := range dangerousEnvPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}
