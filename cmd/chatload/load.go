package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/bits"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

// report is what a run measured. Sizes are bytes, times milliseconds or
// microseconds as named.
type report struct {
	Clients       int     `json:"clients"`
	RampMS        float64 `json:"ramp_ms"`
	UpgradesPerS  float64 `json:"upgrades_per_s"`
	RSSBefore     int64   `json:"rss_before"`
	RSSIdle       int64   `json:"rss_idle"`
	BytesPerConn  float64 `json:"rss_per_conn"`
	Senders       int     `json:"senders,omitempty"`
	Rate          float64 `json:"rate,omitempty"`
	Sent          int64   `json:"sent,omitempty"`
	Expected      int64   `json:"expected,omitempty"`
	Delivered     int64   `json:"delivered,omitempty"`
	Lost          int64   `json:"lost,omitempty"`
	Duplicates    int64   `json:"duplicates,omitempty"`
	DeliveredPerS float64 `json:"delivered_per_s,omitempty"`
	P50MS         float64 `json:"p50_ms,omitempty"`
	P90MS         float64 `json:"p90_ms,omitempty"`
	P99MS         float64 `json:"p99_ms,omitempty"`
	MaxMS         float64 `json:"max_ms,omitempty"`
	CPUSeconds    float64 `json:"gateway_cpu_s,omitempty"`
	CPUPercent    float64 `json:"gateway_cpu_pct,omitempty"`
	CPUPerDelivUS float64 `json:"gateway_cpu_per_delivery_us,omitempty"`
	RSSPeak       int64   `json:"rss_peak,omitempty"`
}

func (r report) print(w io.Writer) {
	fmt.Fprintf(w, "clients            %d, ramped in %.0f ms: %.0f upgrades/s\n", r.Clients, r.RampMS, r.UpgradesPerS)
	fmt.Fprintf(w, "gateway RSS        %.1f MB fresh, %.1f MB with the clients idle: %.2f KB per connection\n",
		mb(r.RSSBefore), mb(r.RSSIdle), r.BytesPerConn/1024)
	if r.Sent == 0 {
		return
	}
	fmt.Fprintf(w, "broadcast          %d senders, %.0f messages/s: %d sent, %d of %d deliveries (%.0f/s)\n",
		r.Senders, r.Rate, r.Sent, r.Delivered, r.Expected, r.DeliveredPerS)
	fmt.Fprintf(w, "loss, duplicates   %d, %d\n", r.Lost, r.Duplicates)
	fmt.Fprintf(w, "latency            p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms\n", r.P50MS, r.P90MS, r.P99MS, r.MaxMS)
	fmt.Fprintf(w, "gateway CPU        %.2f s (%.0f%% of one core): %.3f µs per delivery; peak RSS %.1f MB\n",
		r.CPUSeconds, r.CPUPercent, r.CPUPerDelivUS, mb(r.RSSPeak))
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// client is one websocket of the load, read by its own goroutine.
type client struct {
	id   int
	conn net.Conn
	r    *bufio.Reader
	wmu  sync.Mutex // writes: the reader answers pings, senders send

	mu   sync.Mutex
	seen [][]uint64 // per sender, a bit per sequence number received
}

// dial opens client i's websocket from source address 127.0.0.(2+i%250),
// so the load goes past one address's ephemeral ports.
func dial(ctx context.Context, url string, i int) (*client, error) {
	local := &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+i%250))}
	d := ws.Dialer{
		Timeout: 30 * time.Second,
		NetDial: (&net.Dialer{LocalAddr: local}).DialContext,
	}
	conn, br, _, err := d.Dial(ctx, url+"?handle=u"+strconv.Itoa(i))
	if err != nil {
		return nil, err
	}
	c := &client{id: i, conn: conn, r: bufio.NewReaderSize(conn, 4096)}
	if br != nil {
		c.r = br // bytes the handshake already read stay in it
	}
	return c, nil
}

// stats is the receiving side of a broadcast, shared by all readers.
type stats struct {
	delivered, duplicates atomic.Int64
	last                  atomic.Int64 // unix nanoseconds of the latest delivery
	hist                  [256]atomic.Int64
}

// bucket maps a latency to a histogram bucket: eight per doubling of
// microseconds, about 9 % wide.
func bucket(d time.Duration) int {
	us := max(uint64(d/time.Microsecond), 1)
	b := 8 * (63 - bits.LeadingZeros64(us))
	frac := us >> max(0, 63-bits.LeadingZeros64(us)-3) & 7
	return min(b+int(frac), 255)
}

func bucketValue(b int) time.Duration {
	e, f := b/8, b%8
	return time.Duration(float64(uint64(1)<<e)*(1+float64(f)/8)) * time.Microsecond
}

func (s *stats) percentile(p float64) time.Duration {
	var total int64
	for i := range s.hist {
		total += s.hist[i].Load()
	}
	if total == 0 {
		return 0
	}
	want := int64(math.Ceil(p * float64(total)))
	var n int64
	for i := range s.hist {
		if n += s.hist[i].Load(); n >= want {
			return bucketValue(i)
		}
	}
	return bucketValue(255)
}

var marker = []byte(`"message":"L `)

// read reads frames until the connection ends: it answers pings and counts
// the load's messages.
func (c *client) read(s *stats, senders int) {
	for {
		h, err := ws.ReadHeader(c.r)
		if err != nil {
			return
		}
		p := make([]byte, h.Length)
		if _, err := io.ReadFull(c.r, p); err != nil {
			return
		}
		switch h.OpCode {
		case ws.OpPing:
			c.wmu.Lock()
			wsutil.WriteClientMessage(c.conn, ws.OpPong, p)
			c.wmu.Unlock()
		case ws.OpClose:
			return
		case ws.OpText:
			i := bytes.Index(p, marker)
			if i < 0 {
				continue
			}
			f := strings.Fields(string(p[i+len(marker) : min(len(p), i+len(marker)+64)]))
			if len(f) < 3 {
				continue
			}
			sender, _ := strconv.Atoi(f[0])
			seq, _ := strconv.Atoi(f[1])
			sentAt, _ := strconv.ParseInt(f[2], 10, 64)
			now := time.Now()
			s.hist[bucket(now.Sub(time.Unix(0, sentAt)))].Add(1)
			s.last.Store(now.UnixNano())
			if sender < 0 || sender >= senders {
				continue
			}
			c.mu.Lock()
			if c.seen == nil {
				c.seen = make([][]uint64, senders)
			}
			for len(c.seen[sender]) <= seq/64 {
				c.seen[sender] = append(c.seen[sender], 0)
			}
			w, bit := &c.seen[sender][seq/64], uint64(1)<<(seq%64)
			dup := *w&bit != 0
			*w |= bit
			c.mu.Unlock()
			if dup {
				s.duplicates.Add(1)
			} else {
				s.delivered.Add(1)
			}
		}
	}
}

func (c *client) send(text string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return wsutil.WriteClientText(c.conn, []byte(`{"type":"message","message":"`+text+`"}`))
}

func measure(ctx context.Context, cfg config, log io.Writer) (report, error) {
	r := report{Clients: cfg.clients}
	var err error
	if r.RSSBefore, err = rss(cfg.pid); err != nil {
		return r, fmt.Errorf("reading the gateway's memory (-pid): %w", err)
	}

	// Ramp: all clients, cfg.dialers upgrades in flight.
	fmt.Fprintf(log, "ramping %d clients…\n", cfg.clients)
	clients := make([]*client, cfg.clients)
	var (
		wg    sync.WaitGroup
		next  atomic.Int64
		errMu sync.Mutex
		first error
	)
	start := time.Now()
	for range cfg.dialers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < cfg.clients; i = int(next.Add(1) - 1) {
				c, err := dial(ctx, cfg.url, i)
				if err != nil {
					errMu.Lock()
					first = cmpErr(first, fmt.Errorf("client %d: %w", i, err))
					errMu.Unlock()
					return
				}
				clients[i] = c
			}
		}()
	}
	wg.Wait()
	ramp := time.Since(start)
	if first != nil {
		return r, first
	}
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
	}()
	r.RampMS = float64(ramp.Microseconds()) / 1000
	r.UpgradesPerS = float64(cfg.clients) / ramp.Seconds()

	s := &stats{}
	for _, c := range clients {
		go c.read(s, cfg.senders)
	}
	select {
	case <-time.After(cfg.settle):
	case <-ctx.Done():
		return r, ctx.Err()
	}
	if r.RSSIdle, err = rss(cfg.pid); err != nil {
		return r, err
	}
	r.BytesPerConn = float64(r.RSSIdle-r.RSSBefore) / float64(cfg.clients)
	if cfg.duration == 0 {
		return r, nil
	}

	// Broadcast: the senders together send cfg.rate messages a second.
	fmt.Fprintf(log, "broadcasting for %v…\n", cfg.duration)
	r.Senders, r.Rate, r.RSSPeak = cfg.senders, cfg.rate, r.RSSIdle
	cpu0, err := cpu(cfg.pid)
	if err != nil {
		return r, err
	}
	interval := time.Duration(float64(time.Second) * float64(cfg.senders) / cfg.rate)
	pad := strings.Repeat("x", max(0, cfg.size-40))
	var sent atomic.Int64
	begin := time.Now()
	var swg sync.WaitGroup
	for i := range cfg.senders {
		swg.Add(1)
		go func() {
			defer swg.Done()
			// Senders start spread over one interval, and keep to a schedule.
			t0 := begin.Add(interval * time.Duration(i) / time.Duration(cfg.senders))
			for seq := 0; ; seq++ {
				at := t0.Add(interval * time.Duration(seq))
				if at.Sub(begin) >= cfg.duration || ctx.Err() != nil {
					return
				}
				time.Sleep(time.Until(at))
				if clients[i].send(fmt.Sprintf("L %d %d %d %s", i, seq, time.Now().UnixNano(), pad)) != nil {
					return
				}
				sent.Add(1)
			}
		}()
	}
	stopPeak := make(chan struct{})
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-stopPeak:
				return
			case <-t.C:
				if m, err := rss(cfg.pid); err == nil && m > r.RSSPeak {
					r.RSSPeak = m
				}
			}
		}
	}()
	swg.Wait()
	r.Sent = sent.Load()
	r.Expected = r.Sent * int64(cfg.clients)
	// Wait for the deliveries still on their way: until all arrived, or
	// none has for two seconds.
	for last := s.delivered.Load(); s.delivered.Load() < r.Expected; {
		time.Sleep(500 * time.Millisecond)
		now := s.delivered.Load()
		if now == last && time.Since(time.Unix(0, s.last.Load())) > 2*time.Second {
			break
		}
		last = now
	}
	close(stopPeak)
	end := time.Unix(0, s.last.Load())
	cpu1, err := cpu(cfg.pid)
	if err != nil {
		return r, err
	}
	r.Delivered, r.Duplicates = s.delivered.Load(), s.duplicates.Load()
	r.Lost = r.Expected - r.Delivered
	elapsed := end.Sub(begin)
	r.DeliveredPerS = float64(r.Delivered) / elapsed.Seconds()
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	r.P50MS, r.P90MS, r.P99MS, r.MaxMS = ms(s.percentile(.5)), ms(s.percentile(.9)), ms(s.percentile(.99)), ms(s.percentile(1))
	used := cpu1 - cpu0
	r.CPUSeconds = used.Seconds()
	r.CPUPercent = 100 * used.Seconds() / elapsed.Seconds()
	if r.Delivered > 0 {
		r.CPUPerDelivUS = float64(used.Microseconds()) / float64(r.Delivered)
	}
	return r, nil
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}
