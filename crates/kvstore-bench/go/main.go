// Command valkeyrie-bench runs kvstore-bench's operations through valkeyrie v1, the Go library
// kvstore ports, so kvstore-bench can report kvstore/valkeyrie on the same servers in the same
// run. kvstore-bench starts it once per backend and drives it over stdin/stdout:
//
//	prepare OP WORKERS DIR   set up OP (get, put, atomic_put, list, list10k, list100k,
//	                         lock) for WORKERS
//	                         goroutines under DIR; answers "ok", "unsupported" or "error: ..."
//	run MILLIS               run OP for MILLIS ms; answers one JSON object
//	                         {"ops_per_sec", "p50_us", "p99_us", "cpu_us"} or "error: ..."
//	calls N                  run exactly N calls of OP, spread over the workers (for the
//	                         server's request counter); answers "ok" or "error: ..."
//	cleanup DIR              delete DIR and everything under it; answers "ok" or "error: ..."
//	quit
//
// The keys and values are kvstore-bench's: 64-byte values; get reads 100 keys in turn, list
// lists a directory of 100, 10,000 or 100,000 keys, put
// writes 10 keys per worker, and each lock is released with its renewal stopped (a lock's
// RenewLock channel closed after Unlock), so no lease, session or goroutine outlives its call.
//
// The Redis store uses valkeyrie's JSON codec (redis.NewWithCodec with redis.JSONCodec): through
// NewStore it stores raw values with LastIndex 0, and its AtomicPut and Lock fail on values
// that are not its JSON. BoltDB keeps its file open (PersistConnection), as kvstore's redb
// store does.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/kvtools/boltdb"
	"github.com/kvtools/consul"
	"github.com/kvtools/etcdv3"
	"github.com/kvtools/redis"
	"github.com/kvtools/valkeyrie"
	"github.com/kvtools/valkeyrie/store"
	"github.com/kvtools/zookeeper"
)

// op is one call of the measured operation by worker w.
type op func(ctx context.Context, w, i int) error

func open(ctx context.Context, backend, addr string) (store.Store, error) {
	endpoints := []string{addr}
	timeout := 10 * time.Second
	switch backend {
	case "redis":
		return redis.NewWithCodec(ctx, endpoints, &redis.Config{}, &redis.JSONCodec{})
	case "etcd":
		return valkeyrie.NewStore(ctx, etcdv3.StoreName, endpoints, &etcdv3.Config{ConnectionTimeout: timeout})
	case "zk":
		return valkeyrie.NewStore(ctx, zookeeper.StoreName, endpoints, &zookeeper.Config{ConnectionTimeout: timeout})
	case "consul":
		return valkeyrie.NewStore(ctx, consul.StoreName, endpoints, &consul.Config{ConnectionTimeout: timeout})
	case "boltdb":
		return valkeyrie.NewStore(ctx, boltdb.StoreName, endpoints, &boltdb.Config{
			Bucket: "kvstore-bench", PersistConnection: true, ConnectionTimeout: timeout,
		})
	}
	return nil, fmt.Errorf("unknown backend %q", backend)
}

var value = []byte(strings.Repeat("v", 64))

func prepare(ctx context.Context, kv store.Store, name string, workers int, dir string) (op, error) {
	key := func(w int) string { return fmt.Sprintf("%s/k%d", dir, w) }
	switch name {
	case "get":
		for i := 0; i < 100; i++ {
			if err := kv.Put(ctx, fmt.Sprintf("%s/k%d", dir, i), value, nil); err != nil {
				return nil, err
			}
		}
		return func(ctx context.Context, w, i int) error {
			_, err := kv.Get(ctx, fmt.Sprintf("%s/k%d", dir, i%100), nil)
			return err
		}, nil
	case "put":
		return func(ctx context.Context, w, i int) error {
			return kv.Put(ctx, fmt.Sprintf("%s/w%d/k%d", dir, w, i%10), value, nil)
		}, nil
	case "atomic_put":
		previous := make([]*store.KVPair, workers)
		for w := 0; w < workers; w++ {
			_, pair, err := kv.AtomicPut(ctx, key(w), value, nil, nil)
			if err != nil {
				return nil, err
			}
			previous[w] = pair
		}
		return func(ctx context.Context, w, _ int) error {
			ok, pair, err := kv.AtomicPut(ctx, key(w), value, previous[w], nil)
			if err != nil {
				return err
			}
			if !ok {
				return errors.New("atomic_put refused")
			}
			previous[w] = pair
			return nil
		}, nil
	case "list", "list10k", "list100k":
		n := map[string]int{"list": 100, "list10k": 10000, "list100k": 100000}[name]
		listDir := dir + "/list"
		if err := fill(ctx, kv, listDir, n); err != nil {
			return nil, err
		}
		return func(ctx context.Context, _, _ int) error {
			pairs, err := kv.List(ctx, listDir, nil)
			if err == nil && len(pairs) != n {
				err = fmt.Errorf("list returned %d of %d pairs", len(pairs), n)
			}
			return err
		}, nil
	case "lock":
		return func(ctx context.Context, w, _ int) error {
			// Closing RenewLock ends the lock's renewal goroutine (and with it, on etcd and
			// Consul, the lease or session it keeps alive).
			renew := make(chan struct{})
			defer func() {
				select {
				case <-renew: // already closed: Consul's Unlock closes it itself
				default:
					close(renew)
				}
			}()
			options := &store.LockOptions{TTL: 20 * time.Second, RenewLock: renew}
			lock, err := kv.NewLock(ctx, key(w)+"-lock", options)
			if err != nil {
				return err
			}
			if _, err := lock.Lock(ctx); err != nil {
				return err
			}
			return lock.Unlock(ctx)
		}, nil
	}
	return nil, nil
}

type result struct {
	OpsPerSec float64 `json:"ops_per_sec"`
	P50Us     float64 `json:"p50_us"`
	P99Us     float64 `json:"p99_us"`
	// CPU time of this whole process (user and system, every goroutine) per call.
	CPUUs float64 `json:"cpu_us"`
}

// cpuTime is the CPU time this process has used so far (getrusage(RUSAGE_SELF)).
// fill writes n keys (kvstore-bench's names: k000000, k000001, ...) into dir, 32 at a time.
func fill(ctx context.Context, kv store.Store, dir string, n int) error {
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	next := make(chan int)
	for g := 0; g < 32; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := kv.Put(ctx, fmt.Sprintf("%s/k%06d", dir, i), value, nil); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

func cpuTime() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

// calls runs exactly n calls, worker w making calls w, w+workers, ...
func calls(ctx context.Context, call op, workers, n int) error {
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < n; i += workers {
				if err := call(ctx, w, i/workers); err != nil {
					errs[w] = err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	return errors.Join(errs...)
}

func run(ctx context.Context, call op, workers int, d time.Duration) (result, error) {
	deadline := time.Now().Add(d)
	latencies := make([][]time.Duration, workers)
	errs := make([]error, workers)
	var wg sync.WaitGroup
	start, cpuStart := time.Now(), cpuTime()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				t := time.Now()
				if err := call(ctx, w, i); err != nil {
					errs[w] = err
					return
				}
				latencies[w] = append(latencies[w], time.Since(t))
			}
		}(w)
	}
	wg.Wait()
	elapsed, cpu := time.Since(start), cpuTime()-cpuStart
	var all []time.Duration
	for w := 0; w < workers; w++ {
		if errs[w] != nil {
			return result{}, errs[w]
		}
		all = append(all, latencies[w]...)
	}
	if len(all) == 0 {
		return result{}, errors.New("no call completed")
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) float64 {
		return float64(all[int(p*float64(len(all)-1))].Microseconds())
	}
	return result{
		OpsPerSec: float64(len(all)) / elapsed.Seconds(),
		P50Us:     pct(0.50),
		P99Us:     pct(0.99),
		CPUUs:     float64(cpu.Microseconds()) / float64(len(all)),
	}, nil
}

func main() {
	backend := flag.String("backend", "", "redis, etcd, zk, consul or boltdb")
	addr := flag.String("addr", "", "host:port of the server, or the BoltDB file")
	flag.Parse()
	ctx := context.Background()
	kv, err := open(ctx, *backend, *addr)
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(1)
	}
	defer kv.Close()
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	reply := func(format string, args ...any) {
		fmt.Fprintf(out, format+"\n", args...)
		out.Flush()
	}
	var call op
	workers := 1
	for in.Scan() {
		fields := strings.Fields(in.Text())
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "prepare":
			if len(fields) != 4 {
				reply("error: prepare OP WORKERS DIR")
				continue
			}
			workers, _ = strconv.Atoi(fields[2])
			prepared, err := prepare(ctx, kv, fields[1], workers, fields[3])
			if err == nil && prepared != nil {
				// One call first: a backend without the operation says so only when called
				// (BoltDB's locks).
				err = prepared(ctx, 0, 0)
				if errors.Is(err, store.ErrCallNotSupported) {
					prepared, err = nil, nil
				}
			}
			switch {
			case err != nil:
				reply("error: %v", err)
			case prepared == nil:
				reply("unsupported")
			default:
				call = prepared
				reply("ok")
			}
		case "run":
			ms, _ := strconv.Atoi(fields[1])
			if call == nil {
				reply("error: nothing prepared")
				continue
			}
			r, err := run(ctx, call, workers, time.Duration(ms)*time.Millisecond)
			if err != nil {
				reply("error: %v", err)
				continue
			}
			text, _ := json.Marshal(r)
			reply("%s", text)
		case "calls":
			n, _ := strconv.Atoi(fields[1])
			if call == nil {
				reply("error: nothing prepared")
			} else if err := calls(ctx, call, workers, n); err != nil {
				reply("error: %v", err)
			} else {
				reply("ok")
			}
		case "cleanup":
			if len(fields) != 2 {
				reply("error: cleanup DIR")
			} else if err := kv.DeleteTree(ctx, fields[1]); err != nil && !errors.Is(err, store.ErrKeyNotFound) {
				reply("error: %v", err)
			} else {
				reply("ok")
			}
		case "quit":
			return
		default:
			reply("error: unknown command %q", fields[0])
		}
	}
}
