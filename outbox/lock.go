package outbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// FileLock returns a RelayConfig.Lock that holds an exclusive lock on the
// file path (created if missing) for as long as the relay runs: a second
// relay on the same SQLite database, in any process, fails to start. The
// lock is released by Close or when the process ends.
func FileLock(path string) func() (func(), error) {
	return func() (func(), error) {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			return nil, fmt.Errorf("outbox: relay lock %s: %w", path, err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			owner, _ := os.ReadFile(path)
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("outbox: another relay is running on this SQLite database (lock %s held by pid %s); SQLite allows one relay per database",
					path, strings.TrimSpace(string(owner)))
			}
			return nil, fmt.Errorf("outbox: relay lock %s: %w", path, err)
		}
		_ = f.Truncate(0)
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
		var once sync.Once
		return func() {
			once.Do(func() {
				_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
				f.Close()
			})
		}, nil
	}
}

// MutexLock returns a RelayConfig.Lock for an in-memory SQLite database:
// one relay at a time in this process.
func MutexLock() func() (func(), error) {
	var mu sync.Mutex
	held := false
	return func() (func(), error) {
		mu.Lock()
		defer mu.Unlock()
		if held {
			return nil, errors.New("outbox: another relay is running on this in-memory SQLite database; SQLite allows one relay per database")
		}
		held = true
		var once sync.Once
		return func() {
			once.Do(func() {
				mu.Lock()
				held = false
				mu.Unlock()
			})
		}, nil
	}
}
