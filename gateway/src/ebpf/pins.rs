//! What `fail_mode: closed` leaves in bpffs: pinned links and maps that outlive the
//! gateway, how they are replaced, and how they are removed.
use std::{fs, path::Path};

use aya::programs::links::{FdLink, PinnedLink};
use tracing::{info, warn};

use super::error::{DataplaneError, Result, step};

/// Pins a new link, replacing (and so detaching) the one an earlier gateway pinned. The new
/// link is attached before the old one goes, so there is no window without redirection.
pub fn pin_link(link: FdLink, path: &Path) -> Result<()> {
    if path.exists() {
        let old = PinnedLink::from_pin(path)
            .map_err(step(format!("opening pinned link {}", path.display())))?;
        drop(
            old.unpin()
                .map_err(step(format!("unpinning link {}", path.display())))?,
        );
    }
    link.pin(path)
        .map_err(step(format!("pinning link at {}", path.display())))?;
    Ok(())
}

/// Makes sure `dir` is on a bpf filesystem, mounting bpffs at /sys/fs/bpf if needed.
pub fn prepare_bpffs(dir: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe4a11;
    let bpffs_root = Path::new("/sys/fs/bpf");
    if !dir.starts_with(bpffs_root) {
        return Err(DataplaneError::Invalid(format!(
            "bpffs_dir {} must be under /sys/fs/bpf",
            dir.display()
        )));
    }
    if dir.to_string_lossy().contains('.') {
        return Err(DataplaneError::Invalid(format!(
            "bpffs_dir {} contains a dot, which bpffs refuses in names; rename it",
            dir.display()
        )));
    }
    if statfs_type(bpffs_root)? != BPF_FS_MAGIC {
        // SAFETY: mount(2) with static, NUL-terminated arguments.
        let rc = unsafe {
            libc::mount(
                c"bpffs".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(DataplaneError::Invalid(format!(
                "fail_mode: closed needs bpffs at /sys/fs/bpf and mounting it failed: {}; \
                 mount it on the host (`mount -t bpf bpffs /sys/fs/bpf`) and pass it to the pod",
                std::io::Error::last_os_error()
            )));
        }
        info!("mounted bpffs at /sys/fs/bpf");
    }
    for sub in ["maps", "links"] {
        fs::create_dir_all(dir.join(sub))
            .map_err(step(format!("creating {}", dir.join(sub).display())))?;
    }
    Ok(())
}

fn statfs_type(path: &Path) -> Result<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(step(format!("statfs {}", path.display())))?;
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-buffer.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } != 0 {
        return Err(step(format!("statfs {}", path.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(buf.f_type as i64)
}

/// Unpins every link and map a closed-mode gateway left behind, which detaches the programs.
pub fn detach_pinned(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let links = dir.join("links");
    if links.exists() {
        let listing = || format!("listing pinned links in {}", links.display());
        for entry in fs::read_dir(&links).map_err(step(listing()))? {
            let path = entry.map_err(step(listing()))?.path();
            match PinnedLink::from_pin(&path) {
                Ok(link) => drop(
                    link.unpin()
                        .map_err(step(format!("unpinning link {}", path.display())))?,
                ),
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "not a pinned link; removing file");
                    fs::remove_file(&path).map_err(step(format!("removing {}", path.display())))?;
                }
            }
        }
    }
    fs::remove_dir_all(dir).map_err(step(format!("removing {}", dir.display())))?;
    info!(dir = %dir.display(), "pinned programs and maps removed");
    Ok(())
}
