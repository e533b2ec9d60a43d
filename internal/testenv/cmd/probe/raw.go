package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// rawSockets succeeds if either an AF_PACKET or a raw ICMP socket opens.
func rawSockets() (string, error) {
	var opened, failed []string
	try := func(name string, domain, typ, proto int) {
		fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			failed = append(failed, name+"="+err.Error())
			return
		}
		unix.Close(fd)
		opened = append(opened, name)
	}
	try("packet", unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	try("icmp", unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_ICMP)
	if len(opened) > 0 {
		return "opened " + strings.Join(opened, ","), nil
	}
	return "", errors.New(strings.Join(failed, " "))
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// ping sends one ICMP echo over an unprivileged datagram socket.
func ping(addr string) (string, error) {
	ip, err := netip.ParseAddr(addr)
	if err != nil || !ip.Is4() {
		return "", fmt.Errorf("not an IPv4 address: %q", addr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
	if err != nil {
		return "", fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return "", err
	}
	msg := []byte{8, 0, 0, 0, 0, 0, 0, 1, 'a', 'i', 'r'} // echo request; the kernel fills id and checksum
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrInet4{Addr: ip.As4()}); err != nil {
		return "", fmt.Errorf("sendto: %w", err)
	}
	buf := make([]byte, 1500)
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return "", fmt.Errorf("recvfrom: %w", err)
		}
		if n > 0 && buf[0] == 0 {
			return "reply from " + addr, nil
		}
	}
	return "", errors.New("no reply")
}

// changeFirewall tries to change the packet filter: through an iptables
// binary if the image has one, and by sending an nf_tables batch creating a
// table over NETLINK_NETFILTER.
func changeFirewall() (string, error) {
	var results []string
	changed := false
	for _, bin := range []string{"/usr/sbin/iptables", "/sbin/iptables"} {
		if _, err := os.Stat(bin); err != nil {
			continue
		}
		out, err := exec.Command(bin, "-w", "-N", "AIRLOCK_PROBE").CombinedOutput()
		if err == nil {
			changed = true
			results = append(results, "iptables=changed")
		} else {
			results = append(results, "iptables="+strings.Join(strings.Fields(string(out)), "_"))
		}
		break
	}
	if err := nftNewTable("airlock_probe"); err != nil {
		results = append(results, "nftables="+err.Error())
	} else {
		changed = true
		results = append(results, "nftables=changed")
	}
	if changed {
		return strings.Join(results, " "), nil
	}
	return "", errors.New(strings.Join(results, " "))
}

const (
	nfnlSubsysNFTables = 10
	nfnlMsgBatchBegin  = 0x10
	nfnlMsgBatchEnd    = 0x11
	nftMsgNewTable     = 0
	nftaTableName      = 1
)

// nftNewTable sends BATCH_BEGIN, NEWTABLE name, BATCH_END and returns the
// kernel's answer (EPERM without CAP_NET_ADMIN).
func nftNewTable(name string) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)

	attr := nlattr(nftaTableName, append([]byte(name), 0))
	var batch []byte
	batch = append(batch, nlmsg(nfnlMsgBatchBegin, unix.NLM_F_REQUEST, 1, unix.AF_UNSPEC, nfnlSubsysNFTables, nil)...)
	batch = append(batch, nlmsg(nfnlSubsysNFTables<<8|nftMsgNewTable, unix.NLM_F_REQUEST|unix.NLM_F_ACK|unix.NLM_F_CREATE, 2, unix.AF_INET, 0, attr)...)
	batch = append(batch, nlmsg(nfnlMsgBatchEnd, unix.NLM_F_REQUEST, 3, unix.AF_UNSPEC, nfnlSubsysNFTables, nil)...)
	if err := unix.Sendto(fd, batch, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sendto: %w", err)
	}
	buf := make([]byte, 8192)
	n, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return fmt.Errorf("recvfrom: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return err
	}
	for _, m := range msgs {
		if m.Header.Type == unix.NLMSG_ERROR && len(m.Data) >= 4 {
			if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
				return unix.Errno(-code)
			}
		}
	}
	return nil
}

func nlmsg(typ uint16, flags uint16, seq uint32, family uint8, resID uint16, payload []byte) []byte {
	const hdr = unix.NLMSG_HDRLEN + 4 // nlmsghdr + nfgenmsg
	b := make([]byte, hdr, hdr+len(payload))
	binary.NativeEndian.PutUint32(b[0:], uint32(hdr+len(payload)))
	binary.NativeEndian.PutUint16(b[4:], typ)
	binary.NativeEndian.PutUint16(b[6:], flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	b[16] = family
	b[17] = 0 // NFNETLINK_V0
	binary.BigEndian.PutUint16(b[18:], resID)
	return append(b, payload...)
}

func nlattr(typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b := make([]byte, (l+3)&^3)
	binary.NativeEndian.PutUint16(b[0:], uint16(l))
	binary.NativeEndian.PutUint16(b[2:], typ)
	copy(b[4:], data)
	return b
}
