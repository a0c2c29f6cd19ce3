//! Power cuts, modelled: what was never synced is gone.
//!
//! The server runs in this process over a folder whose SQLite files go
//! through [`Disk`], a VFS that forwards every call to the system's own
//! ("unix") and, each time SQLite syncs a file (its `xSync`, an fsync or
//! fdatasync underneath), copies what the file then holds: that, and only
//! that, is what a disk keeps of a file through a power cut. A cut is a
//! copy of the folder as the disk would come back: every SQLite file with
//! the content it had at its last sync (one never synced is gone, and the
//! shared-memory `-shm` files, which no reboot keeps, are left out), every
//! other file (the layout, which exdaas writes to a temporary file, syncs
//! and renames) as it is. Taken under the lock the syncs take, a cut falls
//! between two syncs, as a real one does.
//!
//! It is the worst case of a real cut in two ways and lenient in one: no
//! write that was not synced survives (a real disk may keep some), and a
//! file's synced content survives whole; but folder entries are taken as
//! they are (exdaas syncs its folder after creating or renaming a file).

use std::collections::{BTreeMap, HashMap};
use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, Once, OnceLock};
use std::time::Duration;

use libsqlite3_sys as ffi;
use serde_json::{json, Value};

use crate::helpers::{exdaas, skip_on_postgres, spawn_app_on, ServerProcess};

/// The VFS's name, as SQLite knows it.
const VFS_NAME: &CStr = c"exdaas-power-cut";

/// A file, by device, inode and creation time: it keeps its identity
/// through a rename, and a new file on a freed inode has another.
type FileKey = (u64, u64, u64);

/// What the disk keeps: of every file opened through the VFS, its content
/// at its last sync (`None`: never synced).
struct Disk {
    files: HashMap<FileKey, Option<Vec<u8>>>,
}

static DISK: LazyLock<Mutex<Disk>> = LazyLock::new(|| Mutex::new(Disk { files: HashMap::new() }));

/// The system's VFS, which every call goes on to (as an address: a raw
/// pointer is not `Sync`).
static SYSTEM: OnceLock<usize> = OnceLock::new();

/// An open file: SQLite allocates `szOsFile` bytes for it, this struct
/// and, right after it, the system VFS's own file.
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    system: *mut ffi::sqlite3_file,
    key: Option<FileKey>,
}

fn key_of(path: &Path) -> Option<FileKey> {
    let m = std::fs::metadata(path).ok()?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    Some((m.dev(), m.ino(), born))
}

fn system_vfs() -> *mut ffi::sqlite3_vfs {
    SYSTEM.get().copied().unwrap_or(0) as *mut ffi::sqlite3_vfs
}

/// The system's file behind `file`, and its methods.
unsafe fn system(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    let inner = (*(file as *mut File)).system;
    (inner, &*(*inner).pMethods)
}

/// What `file` holds now, read through the system's VFS.
unsafe fn content(file: *mut ffi::sqlite3_file, methods: &ffi::sqlite3_io_methods) -> Option<Vec<u8>> {
    let mut size: ffi::sqlite3_int64 = 0;
    if methods.xFileSize?(file, &mut size) != ffi::SQLITE_OK {
        return None;
    }
    let mut bytes = vec![0u8; usize::try_from(size).ok()?];
    let mut at = 0usize;
    while at < bytes.len() {
        let n = (bytes.len() - at).min(1 << 20);
        let rc = methods.xRead?(file, bytes[at..].as_mut_ptr().cast(), n as c_int, at as i64);
        if rc != ffi::SQLITE_OK {
            return None;
        }
        at += n;
    }
    Some(bytes)
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let vfs = system_vfs();
    let inner = file
        .cast::<u8>()
        .add(std::mem::size_of::<File>())
        .cast::<ffi::sqlite3_file>();
    let path = (!name.is_null()).then(|| PathBuf::from(OsStr::from_bytes(CStr::from_ptr(name).to_bytes())));
    let existed = path.as_ref().is_some_and(|p| p.exists());
    let Some(system_open) = (*vfs).xOpen else {
        return ffi::SQLITE_ERROR;
    };
    let rc = system_open(vfs, name, inner, flags, out_flags);
    if rc != ffi::SQLITE_OK || (*inner).pMethods.is_null() {
        (*file).pMethods = std::ptr::null();
        return rc;
    }
    let key = path.as_deref().and_then(key_of);
    std::ptr::write(
        file.cast::<File>(),
        File {
            base: ffi::sqlite3_file { pMethods: &METHODS },
            system: inner,
            key,
        },
    );
    if let Some(key) = key {
        let mut disk = DISK.lock().expect("disk");
        if !existed {
            // A new file (maybe on a reused inode): nothing of it is kept yet.
            disk.files.insert(key, None);
        } else {
            // There before the disk was watched: kept as it is.
            disk.files
                .entry(key)
                .or_insert_with(|| content(inner, &*(*inner).pMethods));
        }
    }
    rc
}

unsafe extern "C" fn delete(_vfs: *mut ffi::sqlite3_vfs, name: *const c_char, sync_dir: c_int) -> c_int {
    let vfs = system_vfs();
    if !name.is_null() {
        let path = PathBuf::from(OsStr::from_bytes(CStr::from_ptr(name).to_bytes()));
        if let Some(key) = key_of(&path) {
            DISK.lock().expect("disk").files.remove(&key);
        }
    }
    match (*vfs).xDelete {
        Some(system_delete) => system_delete(vfs, name, sync_dir),
        None => ffi::SQLITE_ERROR,
    }
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    let (inner, methods) = system(file);
    let Some(system_sync) = methods.xSync else {
        return ffi::SQLITE_IOERR;
    };
    let rc = system_sync(inner, flags);
    if rc == ffi::SQLITE_OK {
        if let Some(key) = (*(file as *mut File)).key {
            // Synced: what the file holds now is what the disk keeps.
            let mut disk = DISK.lock().expect("disk");
            let kept = content(inner, methods);
            disk.files.insert(key, kept);
        }
    }
    rc
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let (inner, methods) = system(file);
    methods.xClose.map_or(ffi::SQLITE_OK, |f| f(inner))
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, buf: *mut c_void, amount: c_int, at: i64) -> c_int {
    let (inner, methods) = system(file);
    methods.xRead.map_or(ffi::SQLITE_IOERR, |f| f(inner, buf, amount, at))
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, buf: *const c_void, amount: c_int, at: i64) -> c_int {
    let (inner, methods) = system(file);
    methods.xWrite.map_or(ffi::SQLITE_IOERR, |f| f(inner, buf, amount, at))
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let (inner, methods) = system(file);
    methods.xTruncate.map_or(ffi::SQLITE_IOERR, |f| f(inner, size))
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    let (inner, methods) = system(file);
    methods.xFileSize.map_or(ffi::SQLITE_IOERR, |f| f(inner, size))
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (inner, methods) = system(file);
    methods.xLock.map_or(ffi::SQLITE_IOERR, |f| f(inner, level))
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    let (inner, methods) = system(file);
    methods.xUnlock.map_or(ffi::SQLITE_IOERR, |f| f(inner, level))
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    let (inner, methods) = system(file);
    methods.xCheckReservedLock.map_or(ffi::SQLITE_IOERR, |f| f(inner, out))
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    let (inner, methods) = system(file);
    methods.xFileControl.map_or(ffi::SQLITE_NOTFOUND, |f| f(inner, op, arg))
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (inner, methods) = system(file);
    methods.xSectorSize.map_or(4096, |f| f(inner))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (inner, methods) = system(file);
    methods.xDeviceCharacteristics.map_or(0, |f| f(inner))
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    page: c_int,
    page_size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    let (inner, methods) = system(file);
    methods
        .xShmMap
        .map_or(ffi::SQLITE_IOERR, |f| f(inner, page, page_size, extend, out))
}

unsafe extern "C" fn shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    let (inner, methods) = system(file);
    methods
        .xShmLock
        .map_or(ffi::SQLITE_IOERR, |f| f(inner, offset, n, flags))
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let (inner, methods) = system(file);
    if let Some(f) = methods.xShmBarrier {
        f(inner);
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    let (inner, methods) = system(file);
    methods.xShmUnmap.map_or(ffi::SQLITE_OK, |f| f(inner, delete))
}

unsafe extern "C" fn fetch(file: *mut ffi::sqlite3_file, at: i64, amount: c_int, out: *mut *mut c_void) -> c_int {
    let (inner, methods) = system(file);
    match methods.xFetch {
        Some(f) => f(inner, at, amount, out),
        None => {
            *out = std::ptr::null_mut();
            ffi::SQLITE_OK
        }
    }
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, at: i64, page: *mut c_void) -> c_int {
    let (inner, methods) = system(file);
    methods.xUnfetch.map_or(ffi::SQLITE_OK, |f| f(inner, at, page))
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// Registers the VFS (once) and routes the SQLite files under `folder`
/// through it: from now on the disk keeps, of them, only what is synced.
pub fn watch(folder: &Path) {
    static REGISTERED: Once = Once::new();
    REGISTERED.call_once(|| unsafe {
        let system = ffi::sqlite3_vfs_find(std::ptr::null());
        assert!(!system.is_null(), "SQLite has a default VFS");
        SYSTEM.get_or_init(|| system as usize);
        // The system's VFS, but for the name, the file size and how files
        // are opened and deleted; its other calls (and `pAppData`, which
        // they read) stay its own.
        let mut vfs: ffi::sqlite3_vfs = *system;
        vfs.szOsFile = std::mem::size_of::<File>() as c_int + (*system).szOsFile;
        vfs.pNext = std::ptr::null_mut();
        vfs.zName = VFS_NAME.as_ptr();
        vfs.xOpen = Some(open);
        vfs.xDelete = Some(delete);
        let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
        assert_eq!(rc, ffi::SQLITE_OK, "VFS registered");
    });
    let name = VFS_NAME.to_str().expect("an ASCII name");
    exdaas::store::engine::sqlite::files::test_vfs::route(folder, name);
}

/// The folder `folder` as a power cut now would leave it, written to
/// `into` (see the module doc).
pub fn cut(folder: &Path, into: &Path) {
    let disk = DISK.lock().expect("disk");
    for entry in std::fs::read_dir(folder).expect("folder readable") {
        let path = entry.expect("folder entry").path();
        let name = path.file_name().expect("a name").to_owned();
        if !path.is_file() || name.to_string_lossy().ends_with("-shm") {
            continue;
        }
        match key_of(&path).and_then(|key| disk.files.get(&key)) {
            Some(Some(kept)) => std::fs::write(into.join(&name), kept).expect("write the kept content"),
            Some(None) => {} // never synced: gone
            None => match std::fs::copy(&path, into.join(&name)) {
                Ok(_) => {}
                // Renamed into place or removed since the listing (a first
                // boot builds shard files under temporary names): at this
                // instant it is not there.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("copy {}: {e}", path.display()),
            },
        }
    }
}

/// Cuts taken during the load of [`ids_survive_a_power_cut_with_sync_normal`].
const CUTS: usize = 3;

/// A new folder under `EXDAAS_SYNC=normal` (commits are not synced one by
/// one, so a power cut may lose acknowledged writes), anonymous creates of
/// the original API from several clients, and power cuts at random moments
/// of the load, the first a few milliseconds after the first boot. On what
/// each cut leaves: `exdaas check` and the server agree (check passes and
/// the server boots), every id acknowledged before the cut reads as the
/// document written under it or as absent (a lost write), and new anonymous
/// creates never get an id that was handed out before the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_survive_a_power_cut_with_sync_normal() {
    if skip_on_postgres("a data folder's files and what the disk keeps of them") {
        return;
    }
    let folder = tempfile::tempdir().expect("temp dir");
    watch(folder.path());
    let env = [("EXDAAS_SYNC", "normal")];
    let app = spawn_app_on(folder.path(), &env).await;
    // Acknowledged anonymous creates: id -> data.
    let acked: Arc<Mutex<BTreeMap<u64, Value>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let (client, address, acked, stop) = (app.client.clone(), app.address.clone(), acked.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let data = json!({"client": c, "n": i});
                let resp = client
                    .post(format!("{address}/api"))
                    .json(&json!({"id": null, "data": data}))
                    .send()
                    .await
                    .expect("request sent");
                assert_eq!(resp.status(), 200, "create acknowledged");
                let body: Value = resp.json().await.expect("JSON");
                let id = body["id"].as_u64().expect("an integer id");
                acked.lock().expect("ledger").insert(id, data);
            }
        }));
    }
    let mut worlds = Vec::new();
    let mut rng = 0x853c_49e6_748f_ea9b_u64;
    for n in 0..CUTS {
        let wait = if n == 0 { 5 } else { 200 + next_random(&mut rng) % 400 };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let world = tempfile::tempdir().expect("temp dir");
        // Under the ledger's lock: every acknowledgement in it came before the cut.
        let before = {
            let acked = acked.lock().expect("ledger");
            cut(folder.path(), world.path());
            acked.clone()
        };
        worlds.push((world, before));
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client");
    }
    app.stop().await;

    let client = reqwest::Client::new();
    for (n, (world, before)) in worlds.iter().enumerate() {
        let checked = exdaas(world.path(), &["check"], &[]).await;
        let booted = ServerProcess::try_start(world.path(), &env).await;
        assert!(
            checked.code == Some(0) && booted.is_ok(),
            "cut {n}: check and the server must both accept what a power cut leaves: check {}\nserver: {}",
            checked.said(),
            booted.as_ref().err().map_or("booted", String::as_str)
        );
        let mut server = booted.expect("booted");
        let mut survived = 0;
        for (id, data) in before {
            let resp = client
                .get(server.url(&format!("/api?id={id}")))
                .send()
                .await
                .expect("request sent");
            assert_eq!(resp.status(), 200, "cut {n}: id {id}");
            // The original API answers an absent id with `"data": null`.
            let doc: Value = resp.json().await.expect("JSON");
            if !doc["data"].is_null() {
                assert_eq!(&doc["data"], data, "cut {n}: id {id} holds another document");
                survived += 1;
            }
        }
        let highest = before.keys().last().copied().unwrap_or(0);
        for i in 0..50 {
            let resp = client
                .post(server.url("/api"))
                .json(&json!({"id": null, "data": {"after_cut": i}}))
                .send()
                .await
                .expect("request sent");
            assert_eq!(resp.status(), 200);
            let id = resp.json::<Value>().await.expect("JSON")["id"].as_u64().expect("an id");
            assert!(
                !before.contains_key(&id),
                "cut {n}: id {id} was handed out again after the cut ({} acknowledged before it, up to {highest}; {survived} survived)",
                before.len()
            );
        }
        eprintln!(
            "cut {n}: {} creates acknowledged before it (ids up to {highest}), {survived} survived; no id handed out again",
            before.len()
        );
        server.signal("KILL");
        server.wait().await;
    }
}

/// Power cuts during a new folder's first boot, at random moments (0 to
/// 149 ms after it starts: before, while and after it writes its layout and
/// creates its shard files, on a debug build): on what each cut leaves,
/// `exdaas check` passes and the server boots and takes writes. (A cut
/// before the layout was written leaves no data folder yet: the server
/// boots over it as over an empty one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_during_a_first_boot_leaves_a_folder_check_and_the_server_accept() {
    if skip_on_postgres("a data folder's files and what the disk keeps of them") {
        return;
    }
    const TRIES: usize = 16;
    let env = [("EXDAAS_SYNC", "normal")];
    let client = reqwest::Client::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    // Cuts that came with the layout written but the shards not all
    // recorded as created: the moments that matter.
    let mut mid_creation = 0;
    for n in 0..TRIES {
        let folder = tempfile::tempdir().expect("temp dir");
        watch(folder.path());
        let after_ms = next_random(&mut rng) % 150;
        let world = tempfile::tempdir().expect("temp dir");
        let cutting = async {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            cut(folder.path(), world.path());
        };
        let (app, ()) = tokio::join!(spawn_app_on(folder.path(), &env), cutting);
        app.stop().await;
        let layout = std::fs::read(world.path().join("exdaas-layout.json")).ok();
        if let Some(layout) = layout {
            let layout: Value = serde_json::from_slice(&layout).expect("a whole layout file");
            if layout["shards_created"] == json!(false) {
                mid_creation += 1;
            }
            let checked = exdaas(world.path(), &["check"], &[]).await;
            assert_eq!(
                checked.code,
                Some(0),
                "try {n} (cut {after_ms} ms into the boot): check refuses what the cut left: {}",
                checked.said()
            );
        }
        let mut server = ServerProcess::try_start(world.path(), &env)
            .await
            .unwrap_or_else(|said| panic!("try {n} (cut {after_ms} ms into the boot): the server refuses: {said}"));
        let resp = client
            .post(server.url("/api"))
            .json(&json!({"id": null, "data": n}))
            .send()
            .await
            .expect("request sent");
        assert_eq!(resp.status(), 200, "try {n}: the server takes writes");
        server.signal("KILL");
        server.wait().await;
    }
    eprintln!("{TRIES} first boots cut, {mid_creation} while the shard files were being created");
    assert!(mid_creation > 0, "no cut came while the shard files were being created");
}

/// Deterministic random numbers, so a failure can be replayed.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
