package redisbus_test

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/eventstest"
	"github.com/aetherium/aetherium/internal/events/redisbus"
)

// redisURL is the Redis the tests use; AETHERIUM_TEST_REDIS_URL overrides the local default.
func redisURL() string {
	if u := os.Getenv("AETHERIUM_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// client connects to the test Redis, skipping (or failing when AETHERIUM_REQUIRE_SERVICES=1) if it does not answer.
func client(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatalf("parse redis url: %v", err)
	}
	c := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatalf("redis at %s is required (AETHERIUM_REQUIRE_SERVICES=1) but unreachable: %v", redisURL(), err)
		}
		t.Skipf("SKIPPING: redis at %s is unreachable: %v", redisURL(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	c := client(t)
	eventstest.Run(t, func(t *testing.T) events.Bus {
		// Pub/sub channels are global to a Redis server (not per database), so each bus gets a channel prefix of
		// its own: parallel test runs and a live deployment on the same Redis never see each other's events.
		return redisbus.New(c, redisbus.WithPrefix("aetherium-test:"+rand.Text()+":"))
	})
}

func TestOpenOwnsConnection(t *testing.T) {
	client(t) // skip when Redis is unreachable
	b, err := redisbus.Open(redisURL(), redisbus.WithPrefix("aetherium-test:"+rand.Text()+":"))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ctx := context.Background()
	if err := b.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := b.Health(ctx); err == nil {
		t.Fatal("health after close succeeded")
	}
	if _, err := redisbus.Open("not-a-url"); err == nil {
		t.Fatal("open of a bad url succeeded")
	}
}

func TestUnreachableRedis(t *testing.T) {
	// Nothing listens on port 1: Subscribe and Publish must fail with an error, not hang.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	b := redisbus.New(c)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := b.Subscribe(ctx, "topic"); err == nil {
		t.Fatal("subscribe to an unreachable redis succeeded")
	}
	if err := b.Publish(ctx, "topic", events.Event{Type: "x"}); err == nil {
		t.Fatal("publish to an unreachable redis succeeded")
	}
	if err := b.Health(ctx); err == nil {
		t.Fatal("health of an unreachable redis succeeded")
	}
}

// namedClient connects to the test Redis with a client name of its own, so that CLIENT LIST shows which
// connections are the test's.
func namedClient(t *testing.T, addr string) (*redis.Client, string) {
	t.Helper()
	opt, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatal(err)
	}
	if addr != "" {
		opt.Addr = addr
	}
	opt.ClientName = "aetherium-test-" + rand.Text()[:12]
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	return c, opt.ClientName
}

// conns returns the CLIENT LIST entries named name, each as its fields.
func conns(t *testing.T, c *redis.Client, name string) []map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	list, err := c.ClientList(ctx).Result()
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	var out []map[string]string
	for _, line := range strings.Split(strings.TrimSpace(list), "\n") {
		f := map[string]string{}
		for _, kv := range strings.Fields(line) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				f[k] = v
			}
		}
		if f["name"] == name {
			out = append(out, f)
		}
	}
	return out
}

// pubsubConns returns the named connections that have subscriptions, and their channel counts.
func pubsubConns(t *testing.T, c *redis.Client, name string) []int {
	t.Helper()
	var subs []int
	for _, f := range conns(t, c, name) {
		if n, _ := strconv.Atoi(f["sub"]); n > 0 {
			subs = append(subs, n)
		}
	}
	return subs
}

// eventually polls cond until it holds, failing with what() after a generous deadline.
func eventually(t *testing.T, what func() string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal(what())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func recv(t *testing.T, s events.Subscription) events.Event {
	t.Helper()
	select {
	case e, ok := <-s.C():
		if !ok {
			t.Fatal("subscription closed, want an event")
		}
		return e
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return events.Event{}
}

// TestManySubscriptionsOneConnection: 500 subscriptions (on 400 channels, some shared) made at once use one
// pub/sub connection; each gets the events of its own topic; closing them unsubscribes every channel.
func TestManySubscriptionsOneConnection(t *testing.T) {
	client(t)
	c, name := namedClient(t, "")
	prefix := "aetherium-test:" + rand.Text() + ":"
	b := redisbus.New(c, redisbus.WithPrefix(prefix))
	defer b.Close()
	const n, channels = 500, 400
	subs := make([]events.Subscription, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			subs[i], errs[i] = b.Subscribe(context.Background(), fmt.Sprintf("t%d", i%channels))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if got := pubsubConns(t, c, name); len(got) != 1 || got[0] != channels {
		t.Fatalf("pub/sub connections named %s (channels of each): %v, want one with %d", name, got, channels)
	}
	ctx := context.Background()
	for i := range channels {
		if err := b.Publish(ctx, fmt.Sprintf("t%d", i), events.Event{Type: "e", Subject: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range subs {
		if e := recv(t, s); e.Subject != fmt.Sprint(i%channels) {
			t.Fatalf("subscription %d of t%d got the event of t%s", i, i%channels, e.Subject)
		}
	}
	for i := range n {
		wg.Go(func() { errs[i] = subs[i].Close() })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() string {
		return fmt.Sprintf("channels left after closing every subscription: %v", pubsubConns(t, c, name))
	},
		func() bool {
			left, err := c.PubSubChannels(ctx, prefix+"*").Result()
			return err == nil && len(left) == 0
		})
	// The connection stays, for the next subscriptions, with nothing subscribed.
	if got := conns(t, c, name); len(got) == 0 {
		t.Fatal("no connection left at all")
	}
}

// TestUnsubscribeFreesChannel: a channel stays subscribed in Redis while any local subscriber has it, and is
// unsubscribed when the last leaves; subscribing again works.
func TestUnsubscribeFreesChannel(t *testing.T) {
	c := client(t)
	prefix := "aetherium-test:" + rand.Text() + ":"
	b := redisbus.New(c, redisbus.WithPrefix(prefix))
	defer b.Close()
	ctx := context.Background()
	numsub := func() int64 {
		m, err := c.PubSubNumSub(ctx, prefix+"x").Result()
		if err != nil {
			t.Fatal(err)
		}
		return m[prefix+"x"]
	}
	s1, err := b.Subscribe(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	s2, err := b.Subscribe(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if got := numsub(); got != 1 {
		t.Fatalf("NUMSUB with two local subscribers: %d, want 1 (one connection)", got)
	}
	_ = s1.Close()
	if err := b.Publish(ctx, "x", events.Event{Type: "after-first-close"}); err != nil {
		t.Fatal(err)
	}
	if e := recv(t, s2); e.Type != "after-first-close" {
		t.Fatalf("got %+v", e)
	}
	if got := numsub(); got != 1 {
		t.Fatalf("NUMSUB after one of two closed: %d, want 1", got)
	}
	_ = s2.Close()
	eventually(t, func() string { return fmt.Sprintf("NUMSUB after the last closed: %d, want 0", numsub()) },
		func() bool { return numsub() == 0 })
	s3, err := b.Subscribe(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer s3.Close()
	if err := b.Publish(ctx, "x", events.Event{Type: "again"}); err != nil {
		t.Fatal(err)
	}
	if e := recv(t, s3); e.Type != "again" {
		t.Fatalf("got %+v", e)
	}
}

// proxy forwards TCP connections to Redis, delaying what clients send by delay, and can freeze the connections it
// has: they stay open but nothing passes any more, like a peer that vanished without a reset.
type proxy struct {
	ln     net.Listener
	target string
	delay  time.Duration
	mu     sync.Mutex
	conns  []*proxied
	wg     sync.WaitGroup
}

type proxied struct {
	client, server net.Conn
	frozen         atomic.Bool
}

func newProxy(t *testing.T, target string, delay time.Duration) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, delay: delay}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			_ = c.client.Close()
			_ = c.server.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		pc := &proxied{client: c, server: s}
		p.mu.Lock()
		p.conns = append(p.conns, pc)
		p.mu.Unlock()
		p.wg.Go(func() { pc.pump(s, c, p.delay) })
		p.wg.Go(func() { pc.pump(c, s, 0) })
	}
}

// freeze makes every connection made so far silent; new ones pass.
func (p *proxy) freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.frozen.Store(true)
	}
}

// pump copies src to dst, each chunk delay after it was read (in order), dropping everything once frozen.
func (c *proxied) pump(dst, src net.Conn, delay time.Duration) {
	type chunk struct {
		b  []byte
		at time.Time
	}
	q := make(chan chunk, 1024)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ch := range q {
			time.Sleep(time.Until(ch.at.Add(delay)))
			if c.frozen.Load() {
				continue
			}
			if _, err := dst.Write(ch.b); err != nil {
				return
			}
		}
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			q <- chunk{b: append([]byte(nil), buf[:n]...), at: time.Now()}
		}
		if err != nil {
			break
		}
	}
	close(q)
	<-done
	_ = dst.Close()
}

// TestSubscribeDuringChurn: Subscribe returns only once Redis has the subscription. The bus's connection delays
// what it sends by 20 ms while events are published over another, direct one: a Subscribe that returned on
// writing SUBSCRIBE would miss them. Meanwhile other subscriptions of the same channel come and go as fast as they
// can, so that SUBSCRIBE and UNSUBSCRIBE of it interleave on the connection.
func TestSubscribeDuringChurn(t *testing.T) {
	direct := client(t)
	p := newProxy(t, direct.Options().Addr, 20*time.Millisecond)
	c, _ := namedClient(t, p.addr())
	b := redisbus.New(c, redisbus.WithPrefix("aetherium-test:"+rand.Text()+":"))
	defer b.Close()
	publisher := redisbus.New(direct, redisbus.WithPrefix(b.Prefix()))
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if s, err := b.Subscribe(ctx, "churn"); err == nil {
					_ = s.Close()
				}
			}
		})
	}
	defer wg.Wait()
	defer cancel()
	for i := range 50 {
		s, err := b.Subscribe(context.Background(), "churn")
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprint(i)
		if err := publisher.Publish(context.Background(), "churn", events.Event{Type: "marker", Subject: want}); err != nil {
			t.Fatal(err)
		}
		if e := recv(t, s); e.Subject != want {
			t.Fatalf("round %d: got %+v", i, e)
		}
		_ = s.Close()
	}
}

// TestSilentConnectionReplaced: a pub/sub connection that stops answering without being reset (the proxy swallows
// everything) is noticed by the pings and replaced; the subscription keeps receiving over the new one.
func TestSilentConnectionReplaced(t *testing.T) {
	direct := client(t)
	p := newProxy(t, direct.Options().Addr, 0)
	c, name := namedClient(t, p.addr())
	b := redisbus.New(c, redisbus.WithPrefix("aetherium-test:"+rand.Text()+":"), redisbus.WithPingInterval(100*time.Millisecond))
	defer b.Close()
	publisher := redisbus.New(direct, redisbus.WithPrefix(b.Prefix()))
	ctx := context.Background()
	s, err := b.Subscribe(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p.freeze()
	// Published until one arrives: what is published before the new connection subscribes is lost.
	deadline := time.After(10 * time.Second)
	for got := false; !got; {
		if err := publisher.Publish(ctx, "x", events.Event{Type: "after-freeze"}); err != nil {
			t.Fatal(err)
		}
		select {
		case e, ok := <-s.C():
			if !ok {
				t.Fatal("subscription closed")
			}
			got = e.Type == "after-freeze"
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			t.Fatal("no event over a new connection within 10s of the old one going silent")
		}
	}
	// The silent connection was closed, not leaked: Redis is left with one subscribed connection of the bus.
	eventually(t, func() string {
		return fmt.Sprintf("subscribed connections named %s: %v", name, pubsubConns(t, direct, name))
	},
		func() bool { return len(pubsubConns(t, direct, name)) == 1 })
}

// redisServer starts a redis-server of the test's own on a free loopback port (never the shared one), persisting
// nothing, and returns its address and a function that kills it.
func redisServer(t *testing.T, port string) (string, func()) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatalf("redis-server is required (AETHERIUM_REQUIRE_SERVICES=1): %v", err)
		}
		t.Skipf("SKIPPING: no redis-server to restart: %v", err)
	}
	if port == "" {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ = net.SplitHostPort(ln.Addr().String())
		_ = ln.Close()
	}
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", t.TempDir(), "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	kill := func() {
		once.Do(func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
	}
	t.Cleanup(kill)
	addr := net.JoinHostPort("127.0.0.1", port)
	probe := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer probe.Close()
	eventually(t, func() string { return "redis-server on " + addr + " does not answer" }, func() bool {
		return probe.Ping(context.Background()).Err() == nil
	})
	return addr, kill
}

// TestRedisRestart: Redis restarts under open subscriptions. They stay open, are subscribed again on the new
// server and receive what is published there; a Subscribe while Redis is down fails rather than hangs; and once
// the bus is closed, none of its goroutines is left.
func TestRedisRestart(t *testing.T) {
	before := runtime.NumGoroutine()
	addr, kill := redisServer(t, "")
	c, _ := namedClient(t, addr)
	b := redisbus.New(c, redisbus.WithPrefix("aetherium-test:"), redisbus.WithPingInterval(200*time.Millisecond))
	ctx := context.Background()
	var subs []events.Subscription
	for _, topic := range []string{"a", "a", "b"} {
		s, err := b.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if err := b.Publish(ctx, "a", events.Event{Type: "before"}); err != nil {
		t.Fatal(err)
	}
	recv(t, subs[0])
	recv(t, subs[1])

	kill()
	sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	if s, err := b.Subscribe(sctx, "c"); err == nil {
		_ = s.Close()
		t.Fatal("subscribe while redis is down succeeded")
	} else if sctx.Err() != nil {
		t.Fatalf("subscribe while redis is down waited out its context: %v", err)
	}
	cancel()

	_, port, _ := net.SplitHostPort(addr)
	redisServer(t, port)
	direct := redis.NewClient(&redis.Options{Addr: addr})
	defer direct.Close()
	eventually(t, func() string { return "the channels were not subscribed again on the restarted redis" }, func() bool {
		m, err := direct.PubSubNumSub(ctx, "aetherium-test:a", "aetherium-test:b").Result()
		return err == nil && m["aetherium-test:a"] == 1 && m["aetherium-test:b"] == 1
	})
	for _, topic := range []string{"a", "b"} {
		if err := b.Publish(ctx, topic, events.Event{Type: "after", Subject: topic}); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range subs {
		if e := recv(t, s); e.Type != "after" {
			t.Fatalf("subscription %d after the restart got %+v", i, e)
		}
	}
	s, err := b.Subscribe(ctx, "c")
	if err != nil {
		t.Fatalf("subscribe after the restart: %v", err)
	}
	_ = s.Close()

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	direct.Close()
	eventually(t, func() string {
		return fmt.Sprintf("%d goroutines after closing the bus, %d before it", runtime.NumGoroutine(), before)
	}, func() bool { return runtime.NumGoroutine() <= before })
}
