// Command probe is run by tests inside job containers and namespaces. It
// tries one network operation and prints one machine-readable line:
//
//	ok <details>     the operation succeeded (exit 0)
//	fail <reason>    it did not (exit 1)
//
// Usage:
//
//	probe tcp ADDR:PORT             connect (IPv4) and read one line
//	probe tcp6 [ADDR]:PORT          connect over IPv6 and read one line
//	probe http URL [--host H] [--sni S] [--ca FILE]
//	                                GET (honours HTTP_PROXY/HTTPS_PROXY)
//	probe dns NAME [--type A|AAAA|TXT] [--server ADDR] [--tcp]
//	                                one query; ok for any answer, with rcode
//	probe raw                       open AF_PACKET and raw ICMP sockets
//	probe ping ADDR                 unprivileged ICMP echo
//	probe iptables                  try to change the packet filter
//
// Exit status 2 means a usage error.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

const timeout = 3 * time.Second

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var (
		detail string
		err    error
	)
	args := os.Args[2:]
	switch os.Args[1] {
	case "tcp":
		detail, err = dialLine("tcp4", one(args))
	case "tcp6":
		detail, err = dialLine("tcp6", one(args))
	case "http":
		detail, err = httpGet(args)
	case "dns":
		detail, err = dnsQuery(args)
	case "raw":
		detail, err = rawSockets()
	case "ping":
		detail, err = ping(one(args))
	case "iptables":
		detail, err = changeFirewall()
	default:
		usage()
	}
	if err != nil {
		fmt.Println("fail " + errText(err))
		os.Exit(1)
	}
	fmt.Println("ok " + detail)
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: probe tcp|tcp6|http|dns|raw|ping|iptables ARGS (see source)")
	os.Exit(2)
}

func one(args []string) string {
	if len(args) != 1 {
		usage()
	}
	return args[0]
}

// parse parses flags that may follow the positional argument.
func parse(fs *flag.FlagSet, args []string) string {
	var pos []string
	for len(args) > 0 {
		if err := fs.Parse(args); err != nil {
			os.Exit(2)
		}
		args = fs.Args()
		if len(args) > 0 {
			pos = append(pos, args[0])
			args = args[1:]
		}
	}
	if len(pos) != 1 {
		usage()
	}
	return pos[0]
}

// errText renders an error compactly, keeping the errno text last.
func errText(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", " ")
}

func dialLine(network, addr string) (string, error) {
	c, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
			return "connected", nil
		}
		return "", fmt.Errorf("connected, reading: %w", err)
	}
	return "connected " + strings.TrimSpace(line), nil
}
