//! Gratuitous ARP: a pod that arrived on another host announces its
//! address from its own interface, so that the bridges and hosts of its
//! segment learn at once which port its (unchanged) hardware address is
//! behind now, instead of sending its traffic to the old one until their
//! entries age out. An ARP request for its own address, as Linux sends
//! with `arp_notify`.

use crate::SysResult;

const ETH_P_ARP: u16 = 0x0806;

/// The frame announcing `ip` at hardware address `mac`.
pub fn frame(mac: [u8; 6], ip: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet, IPv4, 6-byte and 4-byte addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip);
    // Target hardware address zero, target address our own.
    f[38..42].copy_from_slice(&ip);
    f
}

/// Announces one address from one interface; made ahead (see
/// [`crate::packet::Sender`]), usable from any thread once made.
pub struct Announcer {
    out: crate::packet::Sender,
    frame: [u8; 42],
}

impl Announcer {
    /// For `ip` on interface `ifname` of the calling thread's network
    /// namespace.
    pub fn new(ifname: &str, ip: [u8; 4]) -> SysResult<Announcer> {
        let out = crate::packet::Sender::new(ifname)?;
        let frame = frame(out.hw_addr()?, ip);
        Ok(Announcer { out, frame })
    }

    /// Announce it `times` times 50 ms apart (a frame can meet a bridge
    /// port still coming up).
    pub fn announce(&self, times: u32) -> SysResult<()> {
        for i in 0..times {
            if i > 0 {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            self.out.send(&self.frame)?;
        }
        Ok(())
    }

    /// See [`crate::packet::Sender::close_aside`].
    pub fn close_aside(self) {
        self.out.close_aside();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_frame_is_an_arp_request_for_our_own_address() {
        let f = super::frame([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee], [10, 77, 1, 9]);
        assert_eq!(&f[..6], &[0xff; 6]);
        assert_eq!(&f[12..14], &[8, 6]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[28..32], &f[38..42], "sender and target address alike");
        assert_eq!(&f[32..38], &[0; 6]);
    }
}
