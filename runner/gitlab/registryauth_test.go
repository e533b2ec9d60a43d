package gitlab

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"

	"github.com/airlock-ci/airlock/runner/job"
)

func TestConvertRegistryAuth(t *testing.T) {
	auth := base64.StdEncoding.EncodeToString([]byte("robot:s3cr3t-from-auth"))
	r := &JobResponse{Token: "glcbt-64_jobtoken",
		Credentials: []JobCredential{{Type: "registry", URL: "registry.gitlab.example:5050", Username: "gitlab-ci-token", Password: "glcbt-64_jobtoken"}},
		Variables: []JobVariable{{Key: "DOCKER_AUTH_CONFIG", Value: `{"auths": {"https://index.docker.io/v1/": {"auth": "` + auth + `"},
			"registry.gitlab.example:5050": {"username": "deployer", "password": "s3cr3t-plain"}}}`}}}
	j := &job.Job{}
	if errs := r.convertRegistryAuth(j); len(errs) > 0 {
		t.Fatal(errs)
	}
	want := []job.RegistryAuth{
		{Registry: "registry.gitlab.example:5050", Username: "gitlab-ci-token", Password: "glcbt-64_jobtoken"},
		{Registry: "docker.io", Username: "robot", Password: "s3cr3t-from-auth"},
		// Later than GitLab's for the same host: DOCKER_AUTH_CONFIG wins.
		{Registry: "registry.gitlab.example:5050", Username: "deployer", Password: "s3cr3t-plain"},
	}
	if !slices.Equal(j.RegistryAuth, want) {
		t.Errorf("RegistryAuth = %+v, want %+v", j.RegistryAuth, want)
	}
	masks := r.MaskPhrases()
	for _, m := range []string{auth, "s3cr3t-from-auth", "s3cr3t-plain"} {
		if !slices.Contains(masks, m) {
			t.Errorf("MaskPhrases lacks %q", m)
		}
	}
}

// Bad DOCKER_AUTH_CONFIG is refused naming the variable, never its content.
func TestConvertRegistryAuthRefusals(t *testing.T) {
	const secret = "s3cr3t-zz9"
	for raw, want := range map[string]string{
		`{"auths": {"r.example": {"auth": "` + secret + `"}}`: "not JSON",
		`["` + secret + `"]`:                     "not a Docker config.json",
		`{"credsStore": "desktop", "auths": {}}`: "credsStore and credHelpers are not supported",
		`{"auths": {"r.example": {"auth": "` + base64.StdEncoding.EncodeToString([]byte(secret)) + `"}}}`: "not base64 of user:password",
		`{"auths": {"r.example": {"password": "` + secret + `"}}}`:                                        "no registry or username",
	} {
		r := &JobResponse{Variables: []JobVariable{{Key: "DOCKER_AUTH_CONFIG", Value: raw}}}
		errs := r.convertRegistryAuth(&job.Job{})
		msg := ""
		for _, e := range errs {
			msg += e.Error() + "\n"
		}
		if !strings.Contains(msg, "DOCKER_AUTH_CONFIG") || !strings.Contains(msg, want) || strings.Contains(msg, secret) {
			t.Errorf("%s: errors %q, want one saying %q without the secret", raw, msg, want)
		}
	}
}
