package natsconn

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/fly-chat/chat/internal/testkit"
)

// authCase is one credential kind: a server that requires it, a Config that
// carries it, and Configs that must not get in.
type authCase struct {
	scheme string                // URL scheme: nats or tls
	server func(*server.Options) // makes the server require the credential
	good   Config
	bad    map[string]Config
}

// Every credential kind authenticates against a server that requires it, and
// a wrong (or missing) one never gets a connection.
func TestCredentialsAuthenticate(t *testing.T) {
	for name, setup := range map[string]func(t *testing.T, dir string) authCase{
		"user and password": userPasswordCase,
		"token":             tokenCase,
		"nkey":              nkeyCase,
		"creds":             credsCase,
		"tls client cert":   tlsCase,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ac := setup(t, t.TempDir())
			s := testkit.StartNATS(t, ac.server)
			url := fmt.Sprintf("%s://127.0.0.1:%d", ac.scheme, s.Addr().(*net.TCPAddr).Port)

			good := ac.good
			good.URL = url
			if err := good.Validate(); err != nil {
				t.Fatalf("good config invalid: %v", err)
			}
			nc := connectOne(t, good)
			waitConnected(t, nc, 5*time.Second)
			roundTrip(t, nc)

			for badName, bad := range ac.bad {
				t.Run(badName, func(t *testing.T) {
					t.Parallel()
					bad.URL = url
					if err := bad.Validate(); err != nil {
						t.Fatalf("bad config should be valid, only wrong: %v", err)
					}
					nc := connectOne(t, bad)
					deadline := time.Now().Add(1500 * time.Millisecond)
					for time.Now().Before(deadline) {
						if nc.IsConnected() {
							t.Fatalf("connected with a wrong credential to %s", nc.ConnectedUrlRedacted())
						}
						time.Sleep(10 * time.Millisecond)
					}
					if err := nc.LastError(); err != nil {
						t.Logf("refused: %v", err)
					}
				})
			}
		})
	}
}

func connectOne(t *testing.T, c Config) *nats.Conn {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nc, err := Connect(c, "auth-test", "_INBOX_test", log, Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func waitConnected(t *testing.T, nc *nats.Conn, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !nc.IsConnected() {
		if time.Now().After(deadline) {
			t.Fatalf("not connected within %v: last error %v", within, nc.LastError())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// roundTrip proves the server accepts us: a message we publish comes back.
func roundTrip(t *testing.T, nc *nats.Conn) {
	t.Helper()
	sub, err := nc.SubscribeSync("auth.test")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("auth.test", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatalf("no message back: %v", err)
	}
	if string(m.Data) != "hello" {
		t.Fatalf("got %q", m.Data)
	}
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func userPasswordCase(t *testing.T, _ string) authCase {
	return authCase{
		scheme: "nats",
		server: func(o *server.Options) {
			o.Users = []*server.User{{Username: "chat", Password: "s3cret"}}
		},
		good: Config{User: "chat", Password: "s3cret"},
		bad: map[string]Config{
			"wrong password": {User: "chat", Password: "guess"},
			"wrong user":     {User: "other", Password: "s3cret"},
			"none":           {},
		},
	}
}

func tokenCase(t *testing.T, _ string) authCase {
	return authCase{
		scheme: "nats",
		server: func(o *server.Options) { o.Authorization = "t0ken" },
		good:   Config{Token: "t0ken"},
		bad: map[string]Config{
			"wrong token": {Token: "guess"},
			"none":        {},
		},
	}
}

// newUserSeedFile makes a user NKey, writes its seed to a file and returns
// the file and the public key.
func newUserSeedFile(t *testing.T, dir, name string) (file, pub string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := kp.Seed()
	if err != nil {
		t.Fatal(err)
	}
	pub, err = kp.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name, seed), pub
}

func nkeyCase(t *testing.T, dir string) authCase {
	good, pub := newUserSeedFile(t, dir, "user.nk")
	stranger, _ := newUserSeedFile(t, dir, "stranger.nk")
	return authCase{
		scheme: "nats",
		server: func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} },
		good:   Config{NKey: good},
		bad: map[string]Config{
			"unknown nkey": {NKey: stranger},
			"none":         {},
		},
	}
}

// credsCase runs the server in operator mode: it trusts one operator, which
// signed one account, which signed the user in the .creds file.
func credsCase(t *testing.T, dir string) authCase {
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, err := okp.PublicKey()
	must(err)
	ojwt, err := jwt.NewOperatorClaims(opub).Encode(okp)
	must(err)
	operator, err := jwt.DecodeOperatorClaims(ojwt)
	must(err)

	// account signs an account with okp and a user of it, and writes the
	// user's .creds file.
	account := func(signer nkeys.KeyPair, file string) (apub, ajwt, creds string) {
		akp, err := nkeys.CreateAccount()
		must(err)
		apub, err = akp.PublicKey()
		must(err)
		ajwt, err = jwt.NewAccountClaims(apub).Encode(signer)
		must(err)
		ukp, err := nkeys.CreateUser()
		must(err)
		upub, err := ukp.PublicKey()
		must(err)
		useed, err := ukp.Seed()
		must(err)
		ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
		must(err)
		cf, err := jwt.FormatUserConfig(ujwt, useed)
		must(err)
		return apub, ajwt, writeFile(t, dir, file, cf)
	}
	apub, ajwt, good := account(okp, "user.creds")
	// An account the server was never told about.
	_, _, unknownAccount := account(okp, "unknown-account.creds")
	// An account signed by an operator the server does not trust; the
	// server is even told its JWT, and must still refuse it.
	rogue, err := nkeys.CreateOperator()
	must(err)
	rpub, rjwt, rogueOperator := account(rogue, "rogue-operator.creds")

	// The user's JWT with somebody else's seed: the nonce signature fails.
	// (jwt.FormatUserConfig refuses to write such a file, so swap the seed.)
	raw, err := os.ReadFile(good)
	must(err)
	seedKP, err := jwt.ParseDecoratedUserNKey(raw)
	must(err)
	seed, err := seedKP.Seed()
	must(err)
	skp, err := nkeys.CreateUser()
	must(err)
	sseed, err := skp.Seed()
	must(err)
	if !strings.Contains(string(raw), string(seed)) {
		t.Fatal("seed not found in the creds file")
	}
	wrongSeed := writeFile(t, dir, "wrong-seed.creds", []byte(strings.Replace(string(raw), string(seed), string(sseed), 1)))

	return authCase{
		scheme: "nats",
		server: func(o *server.Options) {
			mr := &server.MemAccResolver{}
			must(mr.Store(apub, ajwt))
			must(mr.Store(rpub, rjwt))
			o.TrustedOperators = []*jwt.OperatorClaims{operator}
			o.AccountResolver = mr
		},
		good: Config{Creds: good},
		bad: map[string]Config{
			"unknown account": {Creds: unknownAccount},
			"rogue operator":  {Creds: rogueOperator},
			"wrong seed":      {Creds: wrongSeed},
			"none":            {},
		},
	}
}

// tlsCase makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and a server that requires and verifies client certificates.
func tlsCase(t *testing.T, dir string) authCase {
	ca := newCA(t, "test CA")
	other := newCA(t, "other CA")
	srvCert, srvKey := ca.issue(t, "server", true)
	cliCert, cliKey := ca.issue(t, "client", false)
	strangerCert, strangerKey := other.issue(t, "stranger", false)

	caFile := writeFile(t, dir, "ca.pem", ca.certPEM)
	cert := writeFile(t, dir, "client.pem", cliCert)
	key := writeFile(t, dir, "client-key.pem", cliKey)
	sCert := writeFile(t, dir, "stranger.pem", strangerCert)
	sKey := writeFile(t, dir, "stranger-key.pem", strangerKey)

	serverPair, err := tls.X509KeyPair(srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca.certPEM)
	return authCase{
		scheme: "tls",
		server: func(o *server.Options) {
			o.TLS = true
			o.TLSVerify = true
			o.TLSConfig = &tls.Config{
				Certificates: []tls.Certificate{serverPair},
				ClientAuth:   tls.RequireAndVerifyClientCert,
				ClientCAs:    pool,
				MinVersion:   tls.VersionTLS12,
			}
		},
		good: Config{CA: caFile, Cert: cert, Key: key},
		bad: map[string]Config{
			"no client cert":           {CA: caFile},
			"client cert of other CA":  {CA: caFile, Cert: sCert, Key: sKey},
			"server not trusted by us": {Cert: cert, Key: key}, // no NATS_CA: system roots do not know the test CA
		},
	}
}

type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

func nextSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		panic(err)
	}
	return n
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          nextSerial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a leaf certificate: for the server, valid for 127.0.0.1.
func (ca *testCA) issue(t *testing.T, name string, isServer bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: nextSerial(),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if isServer {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		c       Config
		wantErr string // empty: valid
	}{
		{"nothing", Config{}, ""},
		{"user and password", Config{User: "u", Password: "p"}, ""},
		{"user without password", Config{User: "u"}, ""},
		{"token with TLS", Config{Token: "t", CA: "ca", Cert: "c", Key: "k"}, ""},
		{"creds with CA only", Config{Creds: "f", CA: "ca"}, ""},
		{"creds and nkey", Config{Creds: "f", NKey: "n"}, "at most one"},
		{"user and token", Config{User: "u", Password: "p", Token: "t"}, "at most one"},
		{"nkey and token", Config{NKey: "n", Token: "t"}, "at most one"},
		{"all four", Config{Creds: "f", NKey: "n", User: "u", Token: "t"}, "at most one"},
		{"password without user", Config{Password: "p"}, "NATS_PASSWORD needs NATS_USER"},
		{"password with token", Config{Token: "t", Password: "p"}, "NATS_PASSWORD needs NATS_USER"},
		{"cert without key", Config{Cert: "c"}, "go together"},
		{"key without cert", Config{Key: "k"}, "go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case tc.wantErr != "" && err == nil:
				t.Fatalf("want an error containing %q, got none", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("want an error containing %q, got %v", tc.wantErr, err)
			}
		})
	}
}

// A credential or TLS file that is not there fails Connect at once, instead
// of being retried forever like a refused credential.
func TestMissingFilesFailConnect(t *testing.T) {
	s := testkit.StartNATS(t)
	dir := t.TempDir()
	missing := func(name string) string { return filepath.Join(dir, name) }
	for name, c := range map[string]Config{
		"creds": {Creds: missing("user.creds")},
		"nkey":  {NKey: missing("user.nk")},
		"ca":    {CA: missing("ca.pem")},
		"cert":  {Cert: missing("client.pem"), Key: missing("client-key.pem")},
	} {
		t.Run(name, func(t *testing.T) {
			c.URL = s.ClientURL()
			nc, err := Connect(c, "auth-test", "_INBOX_test", slog.New(slog.NewTextHandler(io.Discard, nil)), Hooks{})
			if err == nil {
				nc.Close()
				t.Fatal("Connect succeeded with a missing file")
			}
			if !errors.Is(err, fs.ErrNotExist) {
				t.Fatalf("want a file-not-found error, got %v", err)
			}
		})
	}
}
