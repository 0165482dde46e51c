//go:build unix

package plugin

import (
	"fmt"
	"os"
	"syscall"
)

// procAttr puts the plugin in its own process group: a Ctrl-C in the
// terminal reaches only the host, which decides how to stop the plugin
// (graceful cancel first, kill on the second Ctrl-C).
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true}
}

// describeExit says in words how a plugin process ended, with the likely
// cause for the signals a trainer dies of.
func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "ended (no exit status)"
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok {
		return st.String()
	}
	switch {
	case ws.Signaled():
		sig := ws.Signal()
		switch sig {
		case syscall.SIGKILL:
			return "was killed by SIGKILL: kill -9, or the kernel's out-of-memory killer " +
				"(look for \"Out of memory\" in `dmesg` or `journalctl -k`)"
		case syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGILL, syscall.SIGFPE:
			return fmt.Sprintf("crashed with %s (a fault in native code, e.g. the CUDA driver or a kernel)", signalName(sig))
		case syscall.SIGABRT:
			return "aborted (SIGABRT: a native library gave up, e.g. a CUDA assertion)"
		}
		return fmt.Sprintf("was killed by %s", signalName(sig))
	case ws.Exited():
		switch code := ws.ExitStatus(); code {
		case 2:
			return "exited with status 2 (a Go panic or fatal runtime error: see its log)"
		default:
			return fmt.Sprintf("exited with status %d", code)
		}
	}
	return st.String()
}

func signalName(sig syscall.Signal) string {
	names := map[syscall.Signal]string{
		syscall.SIGKILL: "SIGKILL", syscall.SIGSEGV: "SIGSEGV", syscall.SIGBUS: "SIGBUS",
		syscall.SIGILL: "SIGILL", syscall.SIGFPE: "SIGFPE", syscall.SIGABRT: "SIGABRT",
		syscall.SIGTERM: "SIGTERM", syscall.SIGINT: "SIGINT", syscall.SIGHUP: "SIGHUP",
	}
	if n, ok := names[sig]; ok {
		return n
	}
	return fmt.Sprintf("signal %d (%s)", int(sig), sig)
}
