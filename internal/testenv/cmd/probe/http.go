package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/miekg/dns"
)

func httpGet(args []string) (string, error) {
	fs := flag.NewFlagSet("http", flag.ContinueOnError)
	host := fs.String("host", "", "Host header to send")
	sni := fs.String("sni", "", "TLS server name to send")
	caFile := fs.String("ca", "", "CA bundle to trust (default: system, SSL_CERT_FILE)")
	auth := fs.String("auth", "", "Authorization header to send")
	var headers headerFlags
	fs.Var(&headers, "header", `a header to send, "Name: value" (repeatable)`)
	url := parse(fs, args)

	tlsConf := &tls.Config{ServerName: *sni}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return "", err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return "", errors.New("no certificate in " + *caFile)
		}
		tlsConf.RootCAs = pool
	}
	client := &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:           http.ProxyFromEnvironment,
			TLSClientConfig: tlsConf,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if *host != "" {
		req.Host = *host
	}
	if *auth != "" {
		req.Header.Set("Authorization", *auth)
	}
	for _, h := range headers {
		name, value, _ := strings.Cut(h, ":")
		req.Header.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	line, _ := bufio.NewReader(resp.Body).ReadString('\n')
	return fmt.Sprintf("status=%d %s", resp.StatusCode, strings.TrimSpace(line)), nil
}

// headerFlags collects repeated --header flags.
type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

func dnsQuery(args []string) (string, error) {
	fs := flag.NewFlagSet("dns", flag.ContinueOnError)
	qtype := fs.String("type", "A", "query type")
	server := fs.String("server", "", "server ADDR[:PORT] (default: first nameserver of /etc/resolv.conf)")
	useTCP := fs.Bool("tcp", false, "query over TCP")
	name := parse(fs, args)

	t, ok := dns.StringToType[strings.ToUpper(*qtype)]
	if !ok {
		return "", fmt.Errorf("unknown query type %q", *qtype)
	}
	srv := *server
	if srv == "" {
		conf, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return "", err
		}
		if len(conf.Servers) == 0 {
			return "", errors.New("no nameserver in /etc/resolv.conf")
		}
		srv = conf.Servers[0]
	}
	if !strings.Contains(srv, ":") || strings.HasSuffix(srv, "]") {
		srv += ":53"
	}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), t)
	c := &dns.Client{Timeout: timeout}
	if *useTCP {
		c.Net = "tcp"
	}
	r, _, err := c.Exchange(m, srv)
	if err != nil {
		return "", err
	}
	var answers []string
	for _, rr := range r.Answer {
		switch v := rr.(type) {
		case *dns.A:
			answers = append(answers, v.A.String())
		case *dns.AAAA:
			answers = append(answers, v.AAAA.String())
		case *dns.TXT:
			answers = append(answers, strings.Join(v.Txt, ""))
		default:
			answers = append(answers, dns.TypeToString[rr.Header().Rrtype])
		}
	}
	return fmt.Sprintf("rcode=%s answers=%s", dns.RcodeToString[r.Rcode], strings.Join(answers, ",")), nil
}
