package server

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/placement"
)

// hostReserveMB is the memory kept for the host (the worker, the kernel, page cache) when offering VMs memory.
const hostReserveMB = 1024

// workerResources is what this worker offers new VMs (placement), or nothing when cpu_overcommit is 0.
func workerResources(cfg config.Config) (placement.Resources, error) {
	if cfg.CPUOvercommit <= 0 {
		return placement.Resources{}, nil
	}
	memRatio := cfg.MemoryOvercommit
	if memRatio <= 0 {
		memRatio = 1
	}
	total, err := hostMemoryMB()
	if err != nil {
		return placement.Resources{}, fmt.Errorf("cpu_overcommit: read the host's memory: %w", err)
	}
	mem := int(float64(max(total-hostReserveMB, 256)) * memRatio)
	return placement.Resources{VCPUs: max(int(float64(runtime.NumCPU())*cfg.CPUOvercommit), 1), MemoryMB: mem,
		VMs: cfg.MaxVMs}, nil
}

// hostMemoryMB reads MemTotal from /proc/meminfo (the VM backends are Linux-only).
func hostMemoryMB() (int, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		kb, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
		if err != nil {
			return 0, fmt.Errorf("MemTotal %q: %w", rest, err)
		}
		return kb / 1024, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no MemTotal in /proc/meminfo")
}
