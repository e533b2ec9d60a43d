package github

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// Runner statuses announced with every poll (§3).
const (
	statusOnline = "Online"
	statusBusy   = "Busy"
)

// Message types the runner handles (§3).
const (
	msgRunnerJobRequest   = "RunnerJobRequest"
	msgPipelineJobRequest = "PipelineAgentJobRequest"
	msgJobCancellation    = "JobCancellation"
	msgBrokerMigration    = "BrokerMigration"
	msgForceTokenRefresh  = "ForceTokenRefresh"
)

// Broker error kinds (§3).
const (
	kindRunnerNotFound          = "RunnerNotFound"
	kindRunnerSessionInvalid    = "RunnerSessionInvalid"
	kindRunnerVersionTooOld     = "RunnerVersionTooOld"
	kindHostedRunnerDeprovision = "HostedRunnerDeprovisioned"
)

// pollTimeout bounds one long poll; the server holds it about 50 s (§3).
const pollTimeout = 100 * time.Second

type sessionAgent struct {
	ID            int64  `json:"id"`
	Name          string `json:"name"`
	Version       string `json:"version"`
	OSDescription string `json:"osDescription"`
}

type encryptionKey struct {
	Encrypted bool   `json:"encrypted"`
	Value     []byte `json:"value"`
}

type taskAgentSession struct {
	SessionID         string         `json:"sessionId"`
	OwnerName         string         `json:"ownerName"`
	Agent             sessionAgent   `json:"agent"`
	UseFipsEncryption bool           `json:"useFipsEncryption"`
	EncryptionKey     *encryptionKey `json:"encryptionKey,omitempty"`
	BrokerMigration   *struct {
		BrokerBaseURL string `json:"brokerBaseUrl"`
	} `json:"brokerMigrationMessage,omitempty"`
}

// message is a TaskAgentMessage.
type message struct {
	MessageID   int64   `json:"messageId"`
	MessageType string  `json:"messageType"`
	Body        string  `json:"body"`
	IV          *string `json:"iv"`
}

// session is an open message session of one registration, on the broker
// or on the pipelines message queue (older flow, which may send a
// BrokerMigration).
type session struct {
	reg *Registration
	ts  *tokenSource
	hc  *http.Client

	id        string
	aesKey    []byte
	broker    string // broker base URL ("" while on pipelines only)
	pipelines bool   // the session lives on the pipelines queue
	lastMsgID int64
}

func ownerName() string {
	h, _ := os.Hostname()
	return fmt.Sprintf("%s (PID: %d)", h, os.Getpid())
}

// openSession creates a session. A 409 (another session is open for this
// runner) is returned as an *APIError for the caller to back off.
func openSession(ctx context.Context, reg *Registration, ts *tokenSource, hc *http.Client) (*session, error) {
	s := &session{reg: reg, ts: ts, hc: hc, broker: reg.ServerURLV2}
	body := taskAgentSession{
		SessionID: "00000000-0000-0000-0000-000000000000",
		OwnerName: ownerName(),
		Agent:     sessionAgent{ID: reg.AgentID, Name: reg.AgentName, Version: RunnerVersion, OSDescription: "Linux"},
	}
	var target string
	var err error
	if reg.UseV2Flow && reg.ServerURLV2 != "" {
		target, err = resolve(reg.ServerURLV2, "session")
	} else {
		s.pipelines = true
		target, err = resolve(reg.ServerURL, fmt.Sprintf("_apis/distributedtask/pools/%d/sessions?api-version=6.0-preview.1", reg.PoolID))
	}
	if err != nil {
		return nil, fmt.Errorf("creating message session: %w", err)
	}
	var ans taskAgentSession
	if _, err := ts.do(ctx, hc, request{op: "creating message session", method: http.MethodPost, url: target, body: body}, &ans); err != nil {
		return nil, err
	}
	if ans.SessionID == "" {
		return nil, errors.New("creating message session: the answer has no session id")
	}
	s.id = ans.SessionID
	if ans.BrokerMigration != nil && ans.BrokerMigration.BrokerBaseURL != "" {
		s.broker = ans.BrokerMigration.BrokerBaseURL
	}
	if k := ans.EncryptionKey; k != nil && len(k.Value) > 0 {
		if !k.Encrypted {
			s.aesKey = k.Value
		} else {
			h := sha1.New()
			if ans.UseFipsEncryption {
				h = sha256.New()
			}
			key, err := rsa.DecryptOAEP(h, nil, reg.Key, k.Value, nil)
			if err != nil {
				return nil, errors.New("creating message session: cannot decrypt the session key with the runner key")
			}
			s.aesKey = key
		}
	}
	return s, nil
}

func (s *session) query(status string) url.Values {
	return url.Values{
		"sessionId":     {s.id},
		"status":        {status},
		"runnerVersion": {RunnerVersion},
		"os":            {"Linux"},
		"architecture":  {"X64"},
		"disableUpdate": {"true"},
	}
}

// poll waits for one message; (nil, nil) is an empty poll.
func (s *session) poll(ctx context.Context, status string) (*message, error) {
	ctx, cancel := context.WithTimeout(ctx, pollTimeout)
	defer cancel()
	if s.pipelines {
		q := s.query(status)
		q.Set("lastMessageId", strconv.FormatInt(s.lastMsgID, 10))
		target, err := resolve(s.reg.ServerURL, fmt.Sprintf("_apis/distributedtask/pools/%d/messages?%s", s.reg.PoolID, q.Encode()))
		if err != nil {
			return nil, err
		}
		m, err := s.get(ctx, target)
		if err != nil || m == nil {
			return nil, err
		}
		s.lastMsgID = m.MessageID
		if derr := s.deleteMessage(ctx, m.MessageID); derr != nil && m.MessageType != msgBrokerMigration {
			return nil, derr
		}
		if m.MessageType != msgBrokerMigration {
			return m, nil
		}
		// Poll the broker with the same session id, then come back here.
		var mig struct {
			BrokerBaseURL string `json:"brokerBaseUrl"`
		}
		if err := decodeJSON(m.Body, &mig); err != nil || mig.BrokerBaseURL == "" {
			return nil, errors.New("polling for messages: BrokerMigration without a broker URL")
		}
		s.broker = mig.BrokerBaseURL
	}
	target, err := resolve(s.broker, "message?"+s.query(status).Encode())
	if err != nil {
		return nil, err
	}
	return s.get(ctx, target)
}

func (s *session) get(ctx context.Context, target string) (*message, error) {
	var m message
	got, err := s.ts.do(ctx, s.hc, request{op: "polling for messages", method: http.MethodGet, url: target}, &m)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil {
			return nil, nil // the poll outlived the server's hold: empty
		}
		return nil, s.classify(err)
	}
	if !got || m.MessageType == "" {
		return nil, nil
	}
	if m.IV != nil && *m.IV != "" {
		if err := s.decrypt(&m); err != nil {
			return nil, err
		}
	}
	return &m, nil
}

// classify maps the broker's error kinds: RunnerNotFound and friends mean
// the registration is gone.
func (s *session) classify(err error) error { return classifyBroker(err) }

func classifyBroker(err error) error {
	switch kindOf(err) {
	case kindRunnerNotFound, kindHostedRunnerDeprovision:
		return fmt.Errorf("%w (%v)", ErrRegistrationGone, err)
	case kindRunnerVersionTooOld:
		return fmt.Errorf("%w: GitHub refuses runner version %s", err, RunnerVersion)
	}
	return err
}

func (s *session) decrypt(m *message) error {
	if s.aesKey == nil {
		return errors.New("polling for messages: an encrypted message but the session has no key")
	}
	iv, err := base64.StdEncoding.DecodeString(*m.IV)
	if err != nil {
		return errors.New("polling for messages: undecodable message iv")
	}
	ct, err := base64.StdEncoding.DecodeString(m.Body)
	if err != nil || len(ct)%aes.BlockSize != 0 || len(ct) == 0 {
		return errors.New("polling for messages: undecodable encrypted body")
	}
	block, err := aes.NewCipher(s.aesKey)
	if err != nil || len(iv) != aes.BlockSize {
		return errors.New("polling for messages: bad session key or iv")
	}
	pt := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, iv).CryptBlocks(pt, ct)
	pad := int(pt[len(pt)-1])
	if pad < 1 || pad > aes.BlockSize || pad > len(pt) {
		return errors.New("polling for messages: bad padding in an encrypted message")
	}
	m.Body = strings.TrimPrefix(string(pt[:len(pt)-pad]), "\ufeff")
	m.IV = nil
	return nil
}

func (s *session) deleteMessage(ctx context.Context, id int64) error {
	target, err := resolve(s.reg.ServerURL, fmt.Sprintf("_apis/distributedtask/pools/%d/messages/%d?sessionId=%s", s.reg.PoolID, id, url.QueryEscape(s.id)))
	if err != nil {
		return err
	}
	_, err = s.ts.do(ctx, s.hc, request{op: "deleting a message", method: http.MethodDelete, url: target}, nil)
	return err
}

// acknowledge tells the broker the job request arrived (§3).
func (s *session) acknowledge(ctx context.Context, requestID, status string) error {
	if s.broker == "" {
		return nil // only the broker takes acknowledgements
	}
	target, err := resolve(s.broker, "acknowledge?"+s.query(status).Encode())
	if err != nil {
		return err
	}
	_, err = s.ts.do(ctx, s.hc, request{op: "acknowledging a job request", method: http.MethodPost, url: target,
		body: map[string]string{"runnerRequestId": requestID}}, nil)
	return err
}

// close deletes the session so that the runner shows offline and a restart
// gets no 409.
func (s *session) close(ctx context.Context) error {
	var target string
	var err error
	if s.pipelines {
		target, err = resolve(s.reg.ServerURL, fmt.Sprintf("_apis/distributedtask/pools/%d/sessions/%s", s.reg.PoolID, url.PathEscape(s.id)))
	} else {
		target, err = resolve(s.broker, "session")
	}
	if err != nil {
		return err
	}
	_, err = s.ts.do(ctx, s.hc, request{op: "deleting message session", method: http.MethodDelete, url: target}, nil)
	return err
}
