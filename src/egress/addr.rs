//! What kind of destination an IP address is: the classification the allowlist's parser
//! (a listed literal) and its CONNECT policy (every resolved address) both use. Pure, and a
//! leaf: it imports nothing from the crate.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What kind of destination an address is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrClass {
    /// Globally routable unicast.
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// RFC 1918, IPv6 ULA fc00::/7, deprecated site-local fec0::/10, local-use NAT64.
    Private,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10 (carrier-grade NAT, also used inside clouds).
    SharedCgnat,
    /// Cloud metadata and platform endpoints (169.254.169.254 and friends).
    Metadata,
    /// Documentation, benchmarking, IETF-reserved and future-use ranges.
    Reserved,
    /// 0.0.0.0/8, :: (connecting there reaches the local host on Linux).
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
}

impl AddrClass {
    /// Words for messages: "a loopback address", ...
    pub fn describe(self) -> &'static str {
        match self {
            AddrClass::Public => "a public address",
            AddrClass::Loopback => "a loopback address",
            AddrClass::Private => "a private-network address",
            AddrClass::LinkLocal => "a link-local address",
            AddrClass::SharedCgnat => "a shared (CGNAT) address",
            AddrClass::Metadata => "a cloud metadata address",
            AddrClass::Reserved => "a reserved (non-routable) address",
            AddrClass::Unspecified => "an unspecified (this-host) address",
            AddrClass::Multicast => "a multicast address",
            AddrClass::Broadcast => "the broadcast address",
        }
    }

    /// Can an explicit `/private` entry ever allow this class?
    pub fn can_be_allowed(self) -> bool {
        !matches!(
            self,
            AddrClass::Unspecified | AddrClass::Multicast | AddrClass::Broadcast
        )
    }
}

/// Cloud metadata / platform endpoints: reachable only through an exactly listed IP literal.
fn is_metadata_v4(a: Ipv4Addr) -> bool {
    let o = a.octets();
    // 169.254.169.0/24: AWS/GCP/Azure/OCI/OpenStack metadata .254, AWS DNS .253, NTP .123.
    // 169.254.170.0/24: AWS ECS task credentials .2, EKS pod identity .23.
    (o[0] == 169 && o[1] == 254 && (o[2] == 169 || o[2] == 170))
        // Alibaba Cloud metadata.
        || o == [100, 100, 100, 200]
        // Azure WireServer (platform agent, looks public).
        || o == [168, 63, 129, 16]
        // Oracle Cloud classic / some OpenStack metadata.
        || o == [192, 0, 0, 192]
}

fn is_metadata_v6(a: Ipv6Addr) -> bool {
    // AWS IMDS over IPv6 lives in fd00:ec2::/64 (::254 metadata, ::253 DNS, ::123 NTP, ::23).
    let s = a.segments();
    s[0] == 0xfd00 && s[1] == 0x0ec2 && s[2] == 0 && s[3] == 0
}

fn classify_v4(a: Ipv4Addr) -> AddrClass {
    let o = a.octets();
    let in_net = |net: [u8; 4], bits: u32| {
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        (u32::from(a) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
    };
    if is_metadata_v4(a) {
        AddrClass::Metadata
    } else if a == Ipv4Addr::BROADCAST {
        AddrClass::Broadcast
    } else if o[0] == 0 {
        AddrClass::Unspecified
    } else if o[0] == 127 {
        AddrClass::Loopback
    } else if in_net([10, 0, 0, 0], 8)
        || in_net([172, 16, 0, 0], 12)
        || in_net([192, 168, 0, 0], 16)
    {
        AddrClass::Private
    } else if in_net([169, 254, 0, 0], 16) {
        AddrClass::LinkLocal
    } else if in_net([100, 64, 0, 0], 10) {
        AddrClass::SharedCgnat
    } else if in_net([224, 0, 0, 0], 4) {
        AddrClass::Multicast
    } else if in_net([192, 0, 0, 0], 24) // IETF protocol assignments
        || in_net([192, 0, 2, 0], 24) // TEST-NET-1
        || in_net([198, 51, 100, 0], 24) // TEST-NET-2
        || in_net([203, 0, 113, 0], 24) // TEST-NET-3
        || in_net([198, 18, 0, 0], 15) // benchmarking
        || in_net([192, 88, 99, 0], 24) // deprecated 6to4 relay anycast
        || in_net([240, 0, 0, 0], 4)
    // future use
    {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// The IPv4 address an IPv6 address carries, for the forms that reach an IPv4 host:
/// IPv4-mapped ::ffff:0:0/96, IPv4-compatible ::/96, SIIT ::ffff:0:0:0/96,
/// well-known NAT64 64:ff9b::/96 and 6to4 2002::/16.
fn embedded_v4(a: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = a.segments();
    let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(tail),
        [0, 0, 0, 0, 0, 0, _, _] => Some(tail),
        [0, 0, 0, 0, 0xffff, 0, _, _] => Some(tail),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(tail),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// Non-routable IPv6 space other than the classes handled before it.
fn is_reserved_v6(s: [u16; 8]) -> bool {
    let ietf = s[0] == 0x2001 && s[1] < 0x0200; // 2001::/23 IETF assignments (Teredo, ...)
    let doc = (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32
        || (s[0] == 0x3fff && s[1] < 0x1000); // 3fff::/20
    let discard = s[0] == 0x0100 && s[1] == 0 && s[2] == 0 && s[3] == 0; // 100::/64
    let srv6 = s[0] == 0x5f00; // 5f00::/16 SRv6 SIDs
    let not_global = s[0] & 0xe000 != 0x2000; // outside 2000::/3 global unicast
    ietf || doc || discard || srv6 || not_global
}

fn classify_v6(a: Ipv6Addr) -> AddrClass {
    let s = a.segments();
    if a.is_unspecified() {
        return AddrClass::Unspecified;
    }
    if a.is_loopback() {
        return AddrClass::Loopback;
    }
    if is_metadata_v6(a) {
        return AddrClass::Metadata;
    }
    if let Some(v4) = embedded_v4(a) {
        return classify_v4(v4);
    }
    let top = s[0];
    if top & 0xff00 == 0xff00 {
        AddrClass::Multicast
    } else if top & 0xffc0 == 0xfe80 {
        AddrClass::LinkLocal
    } else if top & 0xfe00 == 0xfc00 || top & 0xffc0 == 0xfec0 {
        AddrClass::Private
    } else if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // 64:ff9b:1::/48, local-use NAT64 (RFC 8215): translated inside the site.
        AddrClass::Private
    } else if is_reserved_v6(s) {
        AddrClass::Reserved
    } else {
        AddrClass::Public
    }
}

/// Classify an address (IPv4-mapped, NAT64 and 6to4 forms by the IPv4 address they carry).
pub fn classify(ip: IpAddr) -> AddrClass {
    match ip {
        IpAddr::V4(a) => classify_v4(a),
        IpAddr::V6(a) => classify_v6(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn classify_table() {
        use AddrClass::*;
        let table = [
            ("1.1.1.1", Public),
            ("8.8.8.8", Public),
            ("160.79.104.10", Public),
            ("9.255.255.255", Public),
            ("11.0.0.0", Public),
            ("172.15.255.255", Public),
            ("172.32.0.0", Public),
            ("100.63.255.255", Public),
            ("100.128.0.0", Public),
            ("223.255.255.255", Public),
            ("127.0.0.1", Loopback),
            ("127.0.0.11", Loopback),
            ("127.255.255.254", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("169.254.0.1", LinkLocal),
            ("169.254.255.255", LinkLocal),
            ("169.254.169.254", Metadata),
            ("169.254.170.2", Metadata),
            ("169.254.169.253", Metadata),
            ("100.100.100.200", Metadata),
            ("168.63.129.16", Metadata),
            ("192.0.0.192", Metadata),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("255.255.255.254", Reserved),
            ("192.0.2.1", Reserved),
            ("198.51.100.7", Reserved),
            ("203.0.113.9", Reserved),
            ("198.18.0.1", Reserved),
            ("198.19.255.255", Reserved),
            ("192.0.0.8", Reserved),
            ("192.88.99.1", Reserved),
            // IPv6
            ("2606:4700::1111", Public),
            ("2a00:1450:4001::200e", Public),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fc00::1", Private),
            ("fdff::1", Private),
            ("fec0::1", Private),
            ("fd00:ec2::254", Metadata),
            ("fd00:ec2::253", Metadata),
            ("ff02::1", Multicast),
            ("ff05::2", Multicast),
            ("2001:db8::1", Reserved),
            ("3fff::1", Reserved),
            ("3fff:fff::1", Reserved),
            ("3fff:1000::1", Public),
            ("3ff0::1", Public),
            ("2001::1", Reserved), // Teredo
            ("100::1", Reserved),
            ("5f00::1", Reserved),
            ("4000::1", Reserved),
            ("64:ff9b:1::1", Private),
            // IPv6 forms carrying IPv4: classified by the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", Metadata),
            ("::ffff:1.1.1.1", Public),
            ("::ffff:0.0.0.0", Unspecified),
            ("::127.0.0.1", Loopback),
            ("::10.1.2.3", Private),
            ("::ffff:0:10.1.2.3", Private),
            ("64:ff9b::7f00:1", Loopback),
            ("64:ff9b::a9fe:a9fe", Metadata),
            ("64:ff9b::c0a8:101", Private),
            ("64:ff9b::101:101", Public),
            ("2002:7f00:1::", Loopback),
            ("2002:a9fe:a9fe::1", Metadata),
            ("2002:c0a8:0101::", Private),
            ("2002:0101:0101::", Public),
            ("2002:6440:1::", SharedCgnat),
            ("2002:ffff:ffff::", Broadcast),
            ("::ffff:224.0.0.1", Multicast),
        ];
        for (s, want) in table {
            assert_eq!(classify(ip(s)), want, "{s}");
        }
    }
}
