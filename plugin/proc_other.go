//go:build !unix

package plugin

import (
	"os"
	"syscall"
)

func procAttr() *syscall.SysProcAttr { return nil }

func describeExit(st *os.ProcessState) string {
	if st == nil {
		return "ended (no exit status)"
	}
	return st.String()
}
