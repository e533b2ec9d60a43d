// Package netpolicy holds the egress policy model and the per-job egress
// gateway that enforces it.
//
// Policy: ParseEntry/ParseEntries read allowlist entries (host, host:port,
// *.suffix[:port], and admin-only cidr:port); Intersect narrows a job's
// declared entries to the admin ceiling; Policy answers Allows/AllowsName/
// AllowsAddr and carries audit mode and surrogate-delivered Credentials.
//
// Gateway (one per runner, in the agent process): Register starts, on the
// job's gateway address, a DNS server (udp+tcp DNSPort), the explicit proxy
// (ProxyPort: CONNECT and absolute-URI http://), and the transparent HTTP
// and TLS listeners (TransparentHTTPPort, TransparentTLSPort) to which the
// job namespace DNATs tcp/80 and tcp/443. Only the job's own address may
// connect. The gateway resolves every name itself (Resolver), never dials
// an address the client chose, and dials through the DialGuard. Hosts bound
// to a Credential are intercepted with leaf certificates of the runner CA
// (LoadOrCreateCA; mount CA.CertPEM into the job and point SSL_CERT_FILE &
// co. at it) and their surrogates swapped for the real value.
//
// Every decision becomes an Event for the configured EventSink (buffered,
// never blocking the data path) and is counted in the job's Summary.
//
// Limits: only the first request bytes of a CONNECT tunnel are inspected
// (SNI); a surrogate inside a tunnel to a host it is not bound to is
// invisible (and useless) to the gateway. Non-HTTP ports work only through
// CONNECT (clients that ignore the proxy reach only 80/443). HTTP/2 and
// protocol upgrades (WebSocket) are not served on intercepted or plain-HTTP
// connections; they pass through CONNECT tunnels untouched.
package netpolicy
