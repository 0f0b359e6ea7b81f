package logs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
)

// sinkUnderTest is one Sink and a way to read back what reached its backend.
type sinkUnderTest struct {
	sink Sink
	// lines returns the lines of worker's entries that arrived, once want of them are there.
	lines func(worker string, want int) []string
}

// testSink is the conformance suite every Sink passes: concurrent pushes all arrive (the bounded buffer large enough),
// Health answers, Close flushes, and a push after Close fails with ErrClosed.
func testSink(t *testing.T, newSink func(t *testing.T) sinkUnderTest) {
	s := newSink(t)
	worker := "w-" + uuid.NewString()[:8]
	const goroutines, each = 4, 50
	var wg sync.WaitGroup
	for g := 0; g < goroutines; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				e := Entry{Time: time.Now(), Line: fmt.Sprintf("g%d line %d", g, i),
					Labels:   Labels{Service: "aetherium", Role: "worker", Worker: worker, Level: "info", Kind: KindExec},
					Metadata: map[string]string{MetaExecutionID: uuid.NewString()}}
				if err := s.sink.Push(context.Background(), e); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if err := s.sink.Health(context.Background()); err != nil {
		t.Fatalf("Health: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.sink.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.sink.Push(context.Background(), Entry{Line: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Push after Close = %v, want ErrClosed", err)
	}
	got := s.lines(worker, goroutines*each)
	seen := map[string]bool{}
	for _, l := range got {
		seen[l] = true
	}
	for g := 0; g < goroutines; g++ {
		for i := 0; i < each; i++ {
			if l := fmt.Sprintf("g%d line %d", g, i); !seen[l] {
				t.Fatalf("%q did not arrive (%d of %d did)", l, len(seen), goroutines*each)
			}
		}
	}
}

func TestSinkConformance(t *testing.T) {
	t.Run("stdout", func(t *testing.T) {
		testSink(t, func(t *testing.T) sinkUnderTest {
			var mu sync.Mutex
			var buf bytes.Buffer
			w := writerFunc(func(p []byte) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				return buf.Write(p)
			})
			sink := NewStdout(slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug})))
			return sinkUnderTest{sink: sink, lines: func(string, int) []string {
				mu.Lock()
				defer mu.Unlock()
				var out []string
				for _, l := range strings.Split(buf.String(), "\n") {
					if _, rest, ok := strings.Cut(l, `msg="`); ok {
						out = append(out, strings.SplitN(rest, `"`, 2)[0])
					}
				}
				return out
			}}
		})
	})
	for _, format := range pushFormats {
		t.Run("loki "+format+" on VictoriaLogs", func(t *testing.T) {
			testLokiSink(t, format)
		})
	}
}

// testLokiSink runs the suite on the Loki client pushing to a real VictoriaLogs in format.
func testLokiSink(t *testing.T, format string) {
	testSink(t, func(t *testing.T) sinkUnderTest {
		v := startVictoriaLogs(t)
		sink, err := NewLoki(LokiConfig{URL: v.lokiURL(), Format: format, BatchEntries: 30, BatchWait: 10 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		return sinkUnderTest{sink: sink, lines: func(worker string, want int) []string {
			var out []string
			for _, g := range v.queryUntil(fmt.Sprintf(`_stream:{worker=%q}`, worker), want) {
				out = append(out, g["_msg"])
			}
			return out
		}}
	})
}

type writerFunc func(p []byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
