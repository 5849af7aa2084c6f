//! A FUSE filesystem that forgets what was not synced when "the power fails".
//!
//! It passes everything through to a *live* directory (what the page cache shows: reads,
//! `mmap` and `stat` see every write at once, as on a real disk) and keeps a second,
//! *durable* directory: the platter. A file's writes reach the durable copy only when the
//! file is synced — `fsync`/`fdatasync` (LMDB's data pages) or a write on an `O_DSYNC`/
//! `O_SYNC` descriptor (LMDB's meta pages), which is durable when it returns. Between
//! syncs the pages written are remembered as dirty.
//!
//! [`ForgetfulFs::power_cut`] is the power failing: the filesystem stops, each dirty 4 KiB
//! page independently either reached the platter or did not (a seeded coin flip, so
//! unsynced writes land partially and out of order, as a disk's cache may write them), the
//! live directory is replaced by the platter, and a fresh filesystem is mounted on it.
//! A file never synced does not survive.
//!
//! What this does not model: a sync that lies (a disk acknowledging a flush it did not
//! do) and torn writes inside one page; LMDB's own design (meta pages written last, two of
//! them, each with its transaction id) is what copes with those on real hardware.

use std::collections::{BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const PAGE: u64 = 4096;
/// How long an fsync takes here.
const SYNC_TIME: Duration = Duration::from_millis(5);
/// Attributes are never cached by the kernel: sizes change under writes all the time.
const TTL: Duration = Duration::ZERO;

/// What the test learns from one power cut.
#[derive(Debug, Default, Clone, Copy)]
pub struct CutReport {
    /// Dirty pages that reached the platter by chance.
    pub pages_kept: u64,
    /// Dirty pages forgotten.
    pub pages_lost: u64,
}

#[derive(Default)]
struct State {
    live: PathBuf,
    durable: PathBuf,
    /// File names, by inode number - 2 (1 is the root).
    names: Vec<OsString>,
    handles: HashMap<u64, (u64, File)>,
    next_fh: u64,
    /// Pages written since the file's last sync, by inode.
    dirty: HashMap<u64, BTreeSet<u64>>,
    /// Set by a power cut: the filesystem answers nothing any more.
    dead: bool,
    /// Syncs seen (fsync/fdatasync and O_DSYNC writes).
    pub syncs: u64,
    /// The next this many fsyncs fail with EIO, dropping the file's dirty pages the way
    /// Linux does after a writeback error: marked clean, never written, so a retried fsync
    /// would "succeed" without them.
    fail_syncs: u32,
    /// fsyncs failed so far.
    failed_syncs: u64,
}

impl State {
    fn ino(&mut self, name: &OsStr) -> u64 {
        match self.names.iter().position(|n| n == name) {
            Some(i) => i as u64 + 2,
            None => {
                self.names.push(name.to_owned());
                self.names.len() as u64 + 1
            }
        }
    }

    fn name(&self, ino: u64) -> Option<&OsString> {
        self.names.get(ino.checked_sub(2)? as usize)
    }

    fn live_path(&self, ino: u64) -> Option<PathBuf> {
        Some(self.live.join(self.name(ino)?))
    }

    /// Writes the dirty `pages` (all if `None`) of `ino` and its length to the platter.
    fn persist(&mut self, ino: u64, pages: Option<&[u64]>) -> std::io::Result<()> {
        let Some(name) = self.name(ino).cloned() else {
            return Ok(());
        };
        let live = File::open(self.live.join(&name))?;
        let durable = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.durable.join(&name))?;
        let len = live.metadata()?.len();
        let set = self.dirty.entry(ino).or_default();
        let chosen: Vec<u64> = match pages {
            Some(p) => p.to_vec(),
            None => set.iter().copied().collect(),
        };
        let mut buf = vec![0u8; PAGE as usize];
        for page in chosen {
            set.remove(&page);
            copy_page(&live, &durable, page, len, &mut buf)?;
        }
        // A full sync makes the length durable too; single pages (an O_DSYNC write, or
        // pages that happened to reach the platter) extend it only as far as they reach.
        if pages.is_none() {
            durable.set_len(len)?;
            self.syncs += 1;
        }
        Ok(())
    }
}

fn copy_page(from: &File, to: &File, page: u64, len: u64, buf: &mut [u8]) -> std::io::Result<()> {
    let off = page * PAGE;
    if off >= len {
        return Ok(());
    }
    let n = (len - off).min(PAGE) as usize;
    from.read_exact_at(&mut buf[..n], off)?;
    to.write_all_at(&buf[..n], off)
}

fn attr(ino: u64, meta: &std::fs::Metadata) -> FileAttr {
    let time = |s: i64| UNIX_EPOCH + Duration::from_secs(s.max(0) as u64);
    FileAttr {
        ino: INodeNo(ino),
        size: meta.len(),
        blocks: meta.blocks(),
        atime: time(meta.atime()),
        mtime: time(meta.mtime()),
        ctime: time(meta.ctime()),
        crtime: SystemTime::UNIX_EPOCH,
        kind: if meta.is_dir() {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: (meta.mode() & 0o7777) as u16,
        nlink: 1,
        uid: meta.uid(),
        gid: meta.gid(),
        rdev: 0,
        blksize: PAGE as u32,
        flags: 0,
    }
}

fn errno(e: &std::io::Error) -> Errno {
    Errno::from_i32(e.raw_os_error().unwrap_or(libc::EIO))
}

struct Fs(Arc<Mutex<State>>);

impl Fs {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut s = self.state();
        if s.dead || parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        match std::fs::metadata(s.live.join(name)) {
            Ok(meta) => {
                let ino = s.ino(name);
                reply.entry(&TTL, &attr(ino, &meta), Generation(0));
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let s = self.state();
        let path = if ino == INodeNo::ROOT {
            Some(s.live.clone())
        } else {
            s.live_path(ino.0)
        };
        match path.map(std::fs::metadata) {
            Some(Ok(meta)) => reply.attr(&TTL, &attr(ino.0, &meta)),
            Some(Err(e)) => reply.error(errno(&e)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let s = self.state();
        let Some(path) = s.live_path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        if let Some(size) = size {
            // A length change is durable at the next sync, like data.
            let r = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(size));
            if let Err(e) = r {
                return reply.error(errno(&e));
            }
        }
        match std::fs::metadata(&path) {
            Ok(meta) => reply.attr(&TTL, &attr(ino.0, &meta)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut s = self.state();
        let Some(path) = s.live_path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let write = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match OpenOptions::new().read(true).write(write).open(path) {
            Ok(file) => {
                s.next_fh += 1;
                let fh = s.next_fh;
                s.handles.insert(fh, (ino.0, file));
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state();
        if s.dead || parent != INodeNo::ROOT {
            return reply.error(Errno::EIO);
        }
        let path = s.live.join(name);
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode & 0o7777)
            .open(&path)
            .and_then(|f| Ok((f.metadata()?, f)));
        match opened {
            Ok((meta, file)) => {
                let ino = s.ino(name);
                s.next_fh += 1;
                let fh = s.next_fh;
                s.handles.insert(fh, (ino, file));
                reply.created(
                    &TTL,
                    &attr(ino, &meta),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let s = self.state();
        let Some((_, file)) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) => return reply.error(errno(&e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.state();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        let Some((_, file)) = s.handles.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if let Err(e) = file.write_all_at(data, offset) {
            return reply.error(errno(&e));
        }
        let pages: Vec<u64> = if data.is_empty() {
            Vec::new()
        } else {
            (offset / PAGE..=(offset + data.len() as u64 - 1) / PAGE).collect()
        };
        s.dirty.entry(ino.0).or_default().extend(&pages);
        if flags.0 & (libc::O_DSYNC | libc::O_SYNC) != 0 {
            if let Err(e) = s.persist(ino.0, Some(&pages)) {
                return reply.error(errno(&e));
            }
            s.syncs += 1;
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.state().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // A sync takes time on real storage (milliseconds on an SD card); outside the lock,
        // so reads go on. This widens the window in which a cut finds pages written but not
        // yet synced, which is what the power-cut test needs to hit.
        std::thread::sleep(SYNC_TIME);
        let mut s = self.state();
        if s.dead {
            return reply.error(Errno::EIO);
        }
        if s.fail_syncs > 0 {
            s.fail_syncs -= 1;
            s.failed_syncs += 1;
            s.dirty.remove(&ino.0);
            return reply.error(Errno::EIO);
        }
        match s.persist(ino.0, None) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let mut s = self.state();
        let mut entries = vec![
            (1u64, FileType::Directory, OsString::from(".")),
            (1u64, FileType::Directory, OsString::from("..")),
        ];
        if let Ok(dir) = std::fs::read_dir(&s.live) {
            for e in dir.flatten() {
                let name = e.file_name();
                let ino = s.ino(&name);
                entries.push((ino, FileType::RegularFile, name));
            }
        }
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: fuser::ReplyStatfs) {
        // The live directory's figures, so free space looks like the disk's.
        let live = self.state().live.clone();
        let path = std::ffi::CString::new(live.as_os_str().as_encoded_bytes()).unwrap_or_default();
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: a NUL-terminated path and writable memory of the right type.
        if unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
            return reply.error(Errno::EIO);
        }
        // SAFETY: statvfs returned 0 and filled it.
        let st = unsafe { st.assume_init() };
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            st.f_namemax as u32,
            st.f_frsize as u32,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let s = self.state();
        if parent != INodeNo::ROOT {
            return reply.error(Errno::ENOENT);
        }
        let _ = std::fs::remove_file(s.durable.join(name));
        match std::fs::remove_file(s.live.join(name)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// The filesystem, mounted; unmounted when dropped.
pub struct ForgetfulFs {
    state: Arc<Mutex<State>>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    _dirs: tempfile::TempDir,
}

impl ForgetfulFs {
    /// Mounts an empty one on a fresh directory, or says why it cannot (no /dev/fuse, not
    /// allowed to mount). Tests skip on `Err`.
    pub fn mount() -> Result<ForgetfulFs, String> {
        let dirs = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (live, durable, mountpoint) = (
            dirs.path().join("live"),
            dirs.path().join("durable"),
            dirs.path().join("mnt"),
        );
        for d in [&live, &durable, &mountpoint] {
            std::fs::create_dir(d).map_err(|e| e.to_string())?;
        }
        let state = Arc::new(Mutex::new(State {
            live,
            durable,
            ..State::default()
        }));
        let mut fs = ForgetfulFs {
            state,
            session: None,
            mountpoint,
            _dirs: dirs,
        };
        fs.start()?;
        Ok(fs)
    }

    fn start(&mut self) -> Result<(), String> {
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("forgetful".into())];
        let session = fuser::spawn_mount(Fs(self.state.clone()), &self.mountpoint, &config)
            .map_err(|e| format!("cannot mount the FUSE filesystem: {e}"))?;
        self.session = Some(session);
        Ok(())
    }

    /// Where to put the journal.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }

    /// Syncs seen so far.
    pub fn syncs(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).syncs
    }

    /// Makes the next `n` fsyncs fail with EIO (and lose their dirty pages).
    pub fn fail_syncs(&self, n: u32) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_syncs = n;
    }

    /// fsyncs failed so far.
    pub fn failed_syncs(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed_syncs
    }

    /// The power fails: see the module docs. Every process using the filesystem must be
    /// dead already (as after a real cut). Mounts the filesystem again, on the platter.
    pub fn power_cut(&mut self, seed: u64) -> CutReport {
        let mut state = seed;
        self.cut_with(move || {
            // splitmix64: reproducible from the seed, well mixed even for close seeds.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) >> 63 == 1
        })
    }

    /// The power goes: from now on every write and sync fails (a sync in progress
    /// included), before the processes using the filesystem are killed, as on a real cut
    /// where the disk stops at the same instant as the CPU. Follow with [`Self::power_cut`].
    pub fn power_off(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).dead = true;
    }

    /// A power cut in which no unsynced page reaches the platter.
    pub fn power_cut_losing_all_unsynced(&mut self) -> CutReport {
        self.cut_with(|| false)
    }

    /// The cut, with `coin()` saying whether each dirty page reached the platter.
    fn cut_with(&mut self, mut coin: impl FnMut() -> bool) -> CutReport {
        let mut report = CutReport::default();
        {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.dead = true;
            let dirty: Vec<(u64, Vec<u64>)> = s
                .dirty
                .iter()
                .map(|(ino, pages)| (*ino, pages.iter().copied().collect()))
                .collect();
            for (ino, pages) in dirty {
                let (kept, lost): (Vec<u64>, Vec<u64>) = pages.into_iter().partition(|_| coin());
                report.pages_kept += kept.len() as u64;
                report.pages_lost += lost.len() as u64;
                if !kept.is_empty() {
                    // Only the chosen pages reach the platter, not the length.
                    let _ = s.persist(ino, Some(&kept));
                }
            }
            s.dirty.clear();
        }
        // Unmount (the kernel may still write back mmapped pages: they are refused).
        drop(self.session.take());
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.handles.clear();
        // The live directory becomes what the platter holds.
        let _ = std::fs::remove_dir_all(&s.live);
        std::fs::create_dir(&s.live).expect("recreate live dir");
        for e in std::fs::read_dir(&s.durable)
            .expect("read platter")
            .flatten()
        {
            std::fs::copy(e.path(), s.live.join(e.file_name())).expect("copy platter");
        }
        s.dead = false;
        s.names.clear();
        drop(s);
        self.start().expect("remount after the power cut");
        report
    }
}

impl Drop for ForgetfulFs {
    fn drop(&mut self) {
        drop(self.session.take());
    }
}
