package runner

import "github.com/airlock-ci/airlock/netpolicy"

// bindServiceCredentials masks the job's service credentials and their
// surrogates and binds each to the gateway for its host names (an
// address, which the gateway cannot bind, is left out: the job's
// surrogate is worthless there). They widen no egress: the job's policy
// decides whether it may reach those hosts at all.
func (e *execution) bindServiceCredentials() {
	for _, c := range e.j.ServiceCredentials {
		e.masker.Add(c.Value, c.Surrogate)
		if e.policy == nil {
			continue
		}
		var hosts []string
		for _, h := range c.Hosts {
			if ent, err := netpolicy.ParseEntry(h); err == nil && !ent.IsCIDR() && ent.Port == 0 {
				hosts = append(hosts, h)
			}
		}
		if len(hosts) == 0 {
			e.log.Debug("service credential has no host the gateway can bind", "job", e.j.ID, "credential", c.Name)
			continue
		}
		e.policy.Credentials = append(e.policy.Credentials, netpolicy.Credential{
			GrantID: "service:" + c.Name, Surrogate: c.Surrogate, Hosts: hosts, Value: []byte(c.Value),
			ExtraHeaders: c.Headers, QueryParams: c.Query, FormBody: c.FormBody, PlainHTTP: c.PlainHTTP,
			StripUnbound: true, // a client following a redirect sends the service's token along
		})
	}
}
