package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// selfSigned writes a certificate for 127.0.0.1 and its key into dir and
// returns their paths and a pool trusting the certificate.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "lanegate test"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
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
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = filepath.Join(dir, "cert.pem")
	keyFile = filepath.Join(dir, "key.pem")
	writeFile(t, certFile, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	writeFile(t, keyFile, string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})))
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestTLS(t *testing.T) {
	ctx := testContext(t)
	up := newUpstream(t)
	certFile, keyFile, pool := selfSigned(t, t.TempDir())
	in := start(ctx, t, environ(up.URL, "LANEGATE_TLS_CERT_FILE="+certFile, "LANEGATE_TLS_KEY_FILE="+keyFile))

	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	c := &http.Client{Transport: tr}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+in.addrs.Proxy+"/fast/secure", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET over TLS: %v\nstderr:\n%s", err, in.stderr)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET over TLS: got status %d, want 200", resp.StatusCode)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("GET over TLS: got %s, want HTTP/2", resp.Proto)
	}
	h := recv(ctx, t, up.seen, "the upstream's request")
	if got := h.Get("X-Forwarded-Proto"); got != "https" {
		t.Errorf("upstream got X-Forwarded-Proto %q, want https", got)
	}

	// Plain HTTP on the TLS port is not served.
	if r := do(ctx, newClient(t), http.MethodGet, in.proxyURL("/fast/plain"), ""); r.err == nil && r.status == http.StatusOK {
		t.Errorf("plain HTTP to the TLS listener: got 200 %q, want it refused", r.body)
	}

	tr.CloseIdleConnections()
	in.cancel()
	if err := in.wait(ctx, t); err != nil {
		t.Errorf("run: got %v, want nil", err)
	}
}

func TestTLSBadCertificate(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, _ := selfSigned(t, dir)
	other, _, _ := selfSigned(t, t.TempDir()) // its key is not keyFile
	garbage := filepath.Join(dir, "garbage.pem")
	writeFile(t, garbage, "not a certificate\n")
	for _, tt := range []struct {
		name, cert, key string
	}{
		{"certificate not PEM", garbage, keyFile},
		{"key not PEM", certFile, garbage},
		{"key of another certificate", other, keyFile},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Refused at startup, before serving or announcing anything
			// (runOnce fails the test if started is called).
			_, stderr, err := runOnce(t, environ("http://127.0.0.1:1",
				"LANEGATE_TLS_CERT_FILE="+tt.cert, "LANEGATE_TLS_KEY_FILE="+tt.key))
			if err == nil || errors.Is(err, errReported) {
				t.Fatalf("got error %v, want one for main to print", err)
			}
			if !strings.Contains(err.Error(), "LANEGATE_TLS_CERT_FILE") {
				t.Errorf("error %q does not name LANEGATE_TLS_CERT_FILE", err)
			}
			if strings.Contains(stderr, "lanegate started") {
				t.Errorf("log says it started with an unusable certificate:\n%s", stderr)
			}
		})
	}
}
