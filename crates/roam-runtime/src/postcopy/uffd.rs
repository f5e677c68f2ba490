//! The few pieces of Linux's userfaultfd(2) interface post-copy needs: open a descriptor,
//! register a range in MISSING mode, resolve a fault with a copy or a zero page, unregister.
//!
//! The structures and ioctl numbers are those of `<linux/userfaultfd.h>` (stable kernel ABI
//! since Linux 4.3), declared here by hand: libc does not carry them, and generating them
//! would need bindgen and libclang at build time for six ioctls.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

const UFFD_API: u64 = 0xAA;
const UFFDIO: u64 = 0xAA;
/// `UFFD_USER_MODE_ONLY`: only faults taken in user mode are reported. Everything that
/// touches a worker's memory does so from user space, and a descriptor with this flag may be
/// opened without privileges where the kernel allows it (Linux 5.11+).
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;
const UFFDIO_COPY_MODE_DONTWAKE: u64 = 1;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `USERFAULTFD_IOC_NEW` on `/dev/userfaultfd` (Linux 6.1+): the same descriptor the system
/// call gives, for systems whose seccomp policy refuses the call.
const USERFAULTFD_IOC_NEW: libc::c_ulong = ioc(0, 0, 0);

const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// `_IOC(dir, 0xAA, nr, size)` as the generic Linux ioctl encoding builds it.
const fn ioc(dir: u64, nr: u64, size: usize) -> libc::c_ulong {
    ((dir << 30) | ((size as u64) << 16) | (UFFDIO << 8) | nr) as libc::c_ulong
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct UffdioRange {
    start: u64,
    len: u64,
}

#[repr(C)]
struct UffdioRegister {
    range: UffdioRange,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

#[repr(C)]
struct UffdioZeropage {
    range: UffdioRange,
    mode: u64,
    zeropage: i64,
}

/// One message read from the descriptor (`struct uffd_msg`): the event number in the
/// first byte and reserved bytes to the end of the first word, then 24 bytes of payload; for
/// a page fault, the payload is flags, address, thread id.
type UffdMsg = [u64; 4];

const UFFDIO_API: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0x3F, size_of::<UffdioApi>());
const UFFDIO_REGISTER: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0x00, size_of::<UffdioRegister>());
const UFFDIO_UNREGISTER: libc::c_ulong = ioc(IOC_READ, 0x01, size_of::<UffdioRange>());
const UFFDIO_WAKE: libc::c_ulong = ioc(IOC_READ, 0x02, size_of::<UffdioRange>());
const UFFDIO_COPY: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0x03, size_of::<UffdioCopy>());
const UFFDIO_ZEROPAGE: libc::c_ulong = ioc(IOC_READ | IOC_WRITE, 0x04, size_of::<UffdioZeropage>());

// The kernel's sizes; a mismatch would make every ioctl fail with EINVAL (or worse).
const _: () = assert!(size_of::<UffdMsg>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(UFFDIO_API == 0xC018_AA3F);
const _: () = assert!(UFFDIO_COPY == 0xC028_AA03);

/// An open userfaultfd descriptor, API handshake done. Non-blocking and close-on-exec.
#[derive(Debug)]
pub(crate) struct Userfaultfd {
    fd: OwnedFd,
}

/// Why a userfaultfd descriptor could not be opened.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The system call and `/dev/userfaultfd` were both refused for lack of privilege.
    NotPermitted(io::Error),
    /// The kernel has no userfaultfd (or a policy hides it).
    NotSupported(io::Error),
}

impl Userfaultfd {
    /// Opens a descriptor: the system call first, `/dev/userfaultfd` when that is refused.
    pub fn open() -> Result<Userfaultfd, OpenError> {
        let fd = match open_syscall() {
            Ok(fd) => fd,
            Err(syscall) => match open_device() {
                Ok(fd) => fd,
                Err(_) if syscall.raw_os_error() == Some(libc::ENOSYS) => {
                    return Err(OpenError::NotSupported(syscall))
                }
                Err(_) => return Err(OpenError::NotPermitted(syscall)),
            },
        };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: 0,
            ioctls: 0,
        };
        // SAFETY: `fd` is an open userfaultfd and `api` is a live `struct uffdio_api` the
        // kernel reads and writes for the duration of the call.
        if unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(OpenError::NotSupported(io::Error::last_os_error()));
        }
        Ok(Userfaultfd { fd })
    }

    /// A second descriptor for the same userfaultfd context; the context lives until both
    /// are closed.
    pub fn try_clone(&self) -> io::Result<Userfaultfd> {
        Ok(Userfaultfd {
            fd: self.fd.try_clone()?,
        })
    }

    /// Registers `[start, start + len)` in MISSING mode: from now on, a touch of a page there
    /// that has nothing mapped blocks the toucher and is reported on this descriptor.
    pub fn register_missing(&self, start: usize, len: usize) -> io::Result<()> {
        let mut register = UffdioRegister {
            range: UffdioRange {
                start: start as u64,
                len: len as u64,
            },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: a live `struct uffdio_register` for the duration of the call; registering
        // changes how faults in the range are handled, not the memory itself.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_REGISTER, &mut register) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Ends the registration of `[start, start + len)`, waking every thread blocked on a
    /// fault there: it retries, and the kernel fills the page as it would without userfaultfd.
    pub fn unregister(&self, start: usize, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: a live `struct uffdio_range` for the duration of the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_UNREGISTER, &mut range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wakes threads blocked on a fault in `[start, start + len)` (whose page was filled by
    /// other means in the meantime).
    pub fn wake(&self, start: usize, len: usize) -> io::Result<()> {
        let mut range = UffdioRange {
            start: start as u64,
            len: len as u64,
        };
        // SAFETY: a live `struct uffdio_range` for the duration of the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_WAKE, &mut range) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Atomically maps a copy of `src` at `dst` (page-aligned, registered, nothing mapped
    /// yet), without waking whoever waits on it (see [`wake`](Self::wake)). `Ok(false)`:
    /// some pages were mapped already; they are kept and the others filled.
    pub fn copy_no_wake(&self, dst: usize, src: &[u8]) -> io::Result<bool> {
        let mut done = 0usize;
        let mut all_new = true;
        while done < src.len() {
            let mut copy = UffdioCopy {
                dst: (dst + done) as u64,
                src: src[done..].as_ptr() as u64,
                len: (src.len() - done) as u64,
                mode: UFFDIO_COPY_MODE_DONTWAKE,
                copy: 0,
            };
            // SAFETY: `src[done..]` is readable for `copy.len` bytes for the duration of the
            // call; the kernel only maps pages into the registered range at `dst`, where
            // nothing is mapped, so no live Rust reference sees its memory change.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_COPY, &mut copy) };
            if rc == 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            let copied = usize::try_from(copy.copy).unwrap_or(0);
            match error.raw_os_error() {
                // A page already there: keep it, go on after it.
                Some(libc::EEXIST) => {
                    done += copied + page_size();
                    all_new = false;
                }
                // The address space changed under the copy: go on after what was copied.
                Some(libc::EAGAIN) => done += copied,
                _ => return Err(error),
            }
        }
        Ok(all_new)
    }

    /// Maps the zero page over `[start, start + len)` and wakes whoever waits there.
    /// `Ok(false)`: some pages were mapped already; they are kept and the others filled.
    pub fn zero(&self, start: usize, len: usize) -> io::Result<bool> {
        let mut done = 0usize;
        let mut all_new = true;
        while done < len {
            let mut zero = UffdioZeropage {
                range: UffdioRange {
                    start: (start + done) as u64,
                    len: (len - done) as u64,
                },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: a live `struct uffdio_zeropage` for the duration of the call; the
            // kernel only maps zero pages where nothing is mapped.
            let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), UFFDIO_ZEROPAGE, &mut zero) };
            if rc == 0 {
                return Ok(true);
            }
            let error = io::Error::last_os_error();
            let zeroed = usize::try_from(zero.zeropage).unwrap_or(0);
            match error.raw_os_error() {
                Some(libc::EEXIST) => {
                    done += zeroed + page_size();
                    all_new = false;
                }
                Some(libc::EAGAIN) => done += zeroed,
                _ => return Err(error),
            }
        }
        Ok(all_new)
    }

    /// Reads the pending page faults (addresses) into `out`, without blocking; other
    /// events are skipped.
    pub fn read_faults(&self, out: &mut Vec<usize>) -> io::Result<()> {
        let mut msgs: [UffdMsg; 16] = [[0; 4]; 16];
        loop {
            // SAFETY: `msgs` is writable for its whole size; the kernel writes whole messages.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    msgs.as_mut_ptr().cast(),
                    size_of_val(&msgs),
                )
            };
            if n < 0 {
                let error = io::Error::last_os_error();
                return match error.raw_os_error() {
                    Some(libc::EAGAIN) => Ok(()),
                    Some(libc::EINTR) => continue,
                    _ => Err(error),
                };
            }
            let count = n as usize / size_of::<UffdMsg>();
            for msg in &msgs[..count] {
                if msg[0].to_ne_bytes()[0] == UFFD_EVENT_PAGEFAULT {
                    out.push(msg[2] as usize);
                }
            }
            if count < msgs.len() {
                return Ok(());
            }
        }
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn open_syscall() -> io::Result<OwnedFd> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    // SAFETY: userfaultfd(2) takes flags and returns a new descriptor or -1.
    let mut fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | UFFD_USER_MODE_ONLY) };
    if fd < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // A kernel older than 5.11 does not know UFFD_USER_MODE_ONLY.
        // SAFETY: as above.
        fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
    }
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn open_device() -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")?;
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
    // SAFETY: USERFAULTFD_IOC_NEW takes the flags as its argument and returns a new
    // descriptor or -1.
    let fd = unsafe { libc::ioctl(device.as_raw_fd(), USERFAULTFD_IOC_NEW, flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the call returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// An eventfd, to wake the fault thread from `poll` when something other than a fault
/// needs its attention.
#[derive(Debug)]
pub(crate) struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) takes an initial value and flags, returns a descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the call returned a new descriptor that nothing else owns.
        Ok(EventFd {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`; an eventfd only fails this when its counter
        // would overflow, and then it is already signalled.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into `value`; EAGAIN when not signalled, which is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8) };
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until one of `fds` is readable (or an error or hang-up is reported on it).
pub(crate) fn poll_readable(fds: &[RawFd]) -> io::Result<()> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `polls` is a live array of `polls.len()` pollfd structures.
        let rc = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

/// The host's page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
