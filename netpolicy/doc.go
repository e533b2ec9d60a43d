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
// an address the client chose, and dials through the DialGuard (from
// GatewayConfig.EgressSource, if set). Private addresses are dialed only
// where the admin chose them (a HostsResolver entry, a CIDR entry); a
// refusal names its rule (GuardError). Hosts bound to a Credential are
// intercepted with leaf certificates of the runner CA (LoadOrCreateCA;
// mount CA.CertPEM into the job and point SSL_CERT_FILE & co. at it): their
// surrogates are swapped for the real value, and an mTLS Credential's
// client certificate is presented upstream.
//
// Every decision, its job-chosen text masked (JobConfig.Mask), becomes an
// Event for the configured EventSink through a queue per job (batches for
// a BatchSink; a full queue makes only that job wait, then counts drops
// into a KindDropped event) and is counted in the job's Summary;
// Unregister delivers what is queued.
//
// Limits: a TLS CONNECT tunnel is inspected up to its SNI; plaintext HTTP
// in a tunnel is read request by request (its Host must be the tunnel's);
// a surrogate inside a TLS tunnel to a host it is not bound to is
// invisible (and useless) to the gateway. Non-HTTP ports work only through
// CONNECT (clients that ignore the proxy reach only 80/443). HTTP/2 and
// protocol upgrades (WebSocket) are not served on intercepted or plain-HTTP
// connections; they pass through CONNECT tunnels untouched.
package netpolicy
