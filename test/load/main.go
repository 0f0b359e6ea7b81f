//go:build loadtest

// Command load puts one gateway under the load of issue 10 item 6: many concurrent `?wait` executions and many
// open SSE streams, and prints the gateway's Redis connections and goroutines before, during and after. It talks
// to 127.0.0.1 only, is bounded in count and time, and ends by itself. scripts/loadtest.sh starts the gateway and
// the worker it measures and cleans up after it; run that, not this.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

type options struct {
	api, key, debug, redis string
	gatewayPID             int
	execs, streams         int
	wait, total            time.Duration
	sleep                  string
}

func main() {
	var o options
	flag.StringVar(&o.api, "api", "", "gateway base URL (http://127.0.0.1:PORT)")
	flag.StringVar(&o.key, "key", "", "API key")
	flag.StringVar(&o.debug, "debug", "", "gateway's debug_listen address (127.0.0.1:PORT)")
	flag.StringVar(&o.redis, "redis", "127.0.0.1:6379", "Redis address, for CLIENT LIST")
	flag.IntVar(&o.gatewayPID, "gateway-pid", 0, "gateway process id, to count its own connections to Redis")
	flag.IntVar(&o.execs, "execs", 500, "concurrent POST .../execute?wait")
	flag.IntVar(&o.streams, "streams", 200, "SSE streams held open")
	flag.DurationVar(&o.wait, "wait", 60*time.Second, "?wait of each execution")
	flag.StringVar(&o.sleep, "sleep", "2", "seconds each execution sleeps")
	flag.DurationVar(&o.total, "timeout", 8*time.Minute, "bound on the whole run")
	flag.Parse()
	for _, h := range []string{o.api, o.debug, o.redis} {
		if !loopbackURL(h) {
			fmt.Fprintf(os.Stderr, "load: %q is not a 127.0.0.1 address: this test talks to loopback only\n", h)
			os.Exit(2)
		}
	}
	if o.key == "" || o.gatewayPID <= 0 || o.execs < 1 || o.streams < 1 {
		fmt.Fprintln(os.Stderr, "load: -key, -gateway-pid, -execs and -streams are required")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.total)
	defer cancel()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "load:", err)
		os.Exit(1)
	}
}

func loopbackURL(s string) bool {
	s = strings.TrimPrefix(s, "http://")
	host, _, err := net.SplitHostPort(strings.TrimSuffix(s, "/"))
	return err == nil && host == "127.0.0.1"
}

// sample is what is measured at one moment.
type sample struct {
	goroutines  int // the gateway's
	gwRedis     int // the gateway's TCP connections to Redis (its own sockets, from /proc)
	redisTotal  int // CLIENT LIST on the Redis server: every client, this test's or not
	redisPubSub int // CLIENT LIST entries with subscriptions, from the gateway's ports
}

func (s sample) String() string {
	return fmt.Sprintf("goroutines=%-6d gateway->redis tcp=%-5d of them pub/sub=%-5d redis clients (whole server)=%d",
		s.goroutines, s.gwRedis, s.redisPubSub, s.redisTotal)
}

func run(ctx context.Context, o options) error {
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: o.execs + o.streams + 10}}
	c, err := client.New(o.api, o.key, client.WithHTTPClient(hc))
	if err != nil {
		return err
	}
	if err := waitReady(ctx, c); err != nil {
		return err
	}
	fmt.Println("== creating one VM")
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: fmt.Sprintf("load-%d", os.Getpid())})
	if err != nil {
		return fmt.Errorf("create vm: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		defer cancel()
		if _, err := c.DeleteVMAndWait(dctx, vm.ID); err != nil {
			fmt.Fprintln(os.Stderr, "load: delete vm:", err)
		} else {
			fmt.Println("== vm deleted")
		}
	}()
	settle(ctx, 2*time.Second)
	before, err := measure(ctx, o)
	if err != nil {
		return err
	}
	fmt.Println("before:", before)

	// The SSE streams follow one execution that prints a line a second for as long as the executions take.
	long, err := c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "sh",
		Args: []string{"-c", "i=0; while [ $i -lt 40 ]; do echo tick $i; i=$((i+1)); sleep 1; done"}})
	if err != nil {
		return fmt.Errorf("start the streamed execution: %w", err)
	}
	sctx, stopStreams := context.WithCancel(ctx)
	defer stopStreams()
	var streamsOpen, streamsEnded, streamChunks, streamErrs atomic.Int64
	var swg sync.WaitGroup
	for range o.streams {
		swg.Go(func() {
			first := true
			_, err := c.StreamExecution(sctx, long.ExecutionID, func(client.Chunk) error {
				if first {
					first = false
					streamsOpen.Add(1)
				}
				streamChunks.Add(1)
				return nil
			})
			if err != nil && sctx.Err() == nil {
				streamErrs.Add(1)
			}
			streamsEnded.Add(1)
		})
	}

	// Wait (bounded) until every stream has had its first chunk: they are all subscribed then.
	for t0 := time.Now(); streamsOpen.Load() < int64(o.streams) && time.Since(t0) < 30*time.Second; {
		settle(ctx, 100*time.Millisecond)
	}
	fmt.Printf("   %d of %d streams receiving\n", streamsOpen.Load(), o.streams)

	// Samples every half second while the load runs; the one with the most goroutines is "during".
	var (
		mu      sync.Mutex
		samples []sample
	)
	mctx, stopSampling := context.WithCancel(ctx)
	var mwg sync.WaitGroup
	mwg.Go(func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-mctx.Done():
				return
			case <-t.C:
				if s, err := measure(mctx, o); err == nil {
					mu.Lock()
					samples = append(samples, s)
					mu.Unlock()
				}
			}
		}
	})

	fmt.Printf("== %d concurrent POST /vms/%s/execute?wait=%s (sleep %s), %d SSE streams on execution %s\n",
		o.execs, vm.ID, o.wait, o.sleep, o.streams, long.ExecutionID)
	type result struct {
		done bool
		err  error
		took time.Duration
	}
	results := make([]result, o.execs)
	start := time.Now()
	var ewg sync.WaitGroup
	for i := range o.execs {
		ewg.Go(func() {
			t0 := time.Now()
			acc, done, err := c.ExecuteWait(ctx, vm.ID, client.ExecuteRequest{Command: "sleep", Args: []string{o.sleep}}, o.wait)
			if err == nil && done && (acc.Execution == nil || acc.Execution.Status != "completed") {
				err = fmt.Errorf("execution ended %+v", acc.Execution)
			}
			results[i] = result{done: done, err: err, took: time.Since(t0)}
		})
	}
	ewg.Wait()
	elapsed := time.Since(start)
	stopSampling()
	mwg.Wait()
	fmt.Printf("   streams: %d opened (got a first chunk), %d chunks, %d errors\n",
		streamsOpen.Load(), streamChunks.Load(), streamErrs.Load())
	stopStreams()
	swg.Wait()

	var okN, pending, failed int
	var took []time.Duration
	errCount := map[string]int{}
	for _, r := range results {
		switch {
		case r.err != nil:
			failed++
			errCount[r.err.Error()]++
		case r.done:
			okN++
			took = append(took, r.took)
		default:
			pending++
		}
	}
	slices.Sort(took)
	fmt.Printf("   executions: %d completed within the wait (200), %d still running at the wait's end (202), %d errors, in %s\n",
		okN, pending, failed, elapsed.Round(time.Millisecond))
	for e, n := range errCount {
		fmt.Printf("     %d x %s\n", n, e)
	}
	if len(took) > 0 {
		fmt.Printf("   latency of the completed: p50=%s p90=%s max=%s\n", pct(took, 50), pct(took, 90), took[len(took)-1])
	}
	if len(samples) == 0 {
		return errors.New("no sample taken during the load")
	}
	peak := samples[0]
	maxRedis := 0
	for _, s := range samples {
		if s.goroutines > peak.goroutines {
			peak = s
		}
		maxRedis = max(maxRedis, s.gwRedis)
	}
	fmt.Println("during (peak goroutines):", peak)
	fmt.Println("during: most gateway->redis tcp connections seen:", maxRedis)
	// The client's idle keep-alive connections would each keep a gateway goroutine: drop them before "after".
	hc.CloseIdleConnections()
	settle(ctx, 5*time.Second)
	after, err := measure(ctx, o)
	if err != nil {
		return err
	}
	fmt.Println("after:", after)
	if failed > 0 {
		return fmt.Errorf("%d executions failed", failed)
	}
	return nil
}

func pct(d []time.Duration, p int) time.Duration { return d[(len(d)-1)*p/100].Round(time.Millisecond) }

func settle(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func waitReady(ctx context.Context, c *client.Client) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	for {
		r, err := c.Ready(ctx)
		if err == nil && r != nil && r.Status == "ready" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gateway not ready: %v (last: %+v)", ctx.Err(), r)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func measure(ctx context.Context, o options) (sample, error) {
	var s sample
	var err error
	if s.goroutines, err = goroutines(ctx, o.debug); err != nil {
		return s, err
	}
	ports, err := redisPorts(o.gatewayPID, o.redis)
	if err != nil {
		return s, err
	}
	s.gwRedis = len(ports)
	clients, err := clientList(ctx, o.redis)
	if err != nil {
		return s, err
	}
	s.redisTotal = len(clients)
	for _, cl := range clients {
		_, port, _ := net.SplitHostPort(cl["addr"])
		if n, _ := strconv.Atoi(port); ports[n] && (cl["sub"] != "0" || cl["psub"] != "0") {
			s.redisPubSub++
		}
	}
	return s, nil
}

// goroutines reads the count from the gateway's pprof endpoint ("goroutine profile: total N").
func goroutines(ctx context.Context, debugAddr string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+debugAddr+"/debug/pprof/goroutine?debug=1", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("goroutines: %w", err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil {
		return 0, fmt.Errorf("goroutines: %w", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "goroutine profile: total ")))
	if err != nil {
		return 0, fmt.Errorf("goroutines: unexpected %q", line)
	}
	return n, nil
}

// redisPorts returns the local ports of pid's established TCP connections to the Redis address, found by matching
// the socket inodes of its descriptors against /proc/net/tcp.
func redisPorts(pid int, redisAddr string) (map[int]bool, error) {
	ap, err := net.ResolveTCPAddr("tcp4", redisAddr)
	if err != nil {
		return nil, err
	}
	inodes := map[string]bool{}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, fmt.Errorf("gateway descriptors: %w", err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join(fmt.Sprintf("/proc/%d/fd", pid), fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return nil, err
	}
	want := fmt.Sprintf("%08X:%04X", le32(ap.IP.To4()), ap.Port)
	ports := map[int]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode
		if len(f) < 10 || f[2] != want || f[3] != "01" || !inodes[f[9]] {
			continue
		}
		_, lp, _ := strings.Cut(f[1], ":")
		if p, err := strconv.ParseUint(lp, 16, 16); err == nil {
			ports[int(p)] = true
		}
	}
	return ports, nil
}

// le32 renders an IPv4 address as /proc/net/tcp does: the 32-bit word in host (little-endian) order.
func le32(ip net.IP) uint32 {
	return uint32(ip[3])<<24 | uint32(ip[2])<<16 | uint32(ip[1])<<8 | uint32(ip[0])
}

// clientList runs CLIENT LIST over a plain connection (RESP by hand: no client library is needed for one command).
func clientList(ctx context.Context, addr string) ([]map[string]string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "*2\r\n$6\r\nCLIENT\r\n$4\r\nLIST\r\n"); err != nil {
		return nil, fmt.Errorf("redis: %w", err)
	}
	r := bufio.NewReader(conn)
	head, err := r.ReadString('\n')
	if err != nil || !strings.HasPrefix(head, "$") {
		return nil, fmt.Errorf("redis: CLIENT LIST: unexpected reply %q (%v)", head, err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(head[1:]))
	if err != nil {
		return nil, fmt.Errorf("redis: CLIENT LIST: %q", head)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, fmt.Errorf("redis: CLIENT LIST: %w", err)
	}
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(string(body)), "\n") {
		m := map[string]string{}
		for _, kv := range strings.Fields(line) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				m[k] = v
			}
		}
		out = append(out, m)
	}
	return out, nil
}
