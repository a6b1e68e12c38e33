//! The vgctl commands, run against a connected client with a current directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use anyhow::{bail, Context};
use vg_fuse::client::{Client, Error, Maker};
use vg_wire::ns::{self, StorageState};
use vg_wire::size::format_size;
use vg_wire::{Attr, BlockId, FileKind, Ino, Location, ROOT_INO};

use crate::paths::{absolute, local_name, split_path};
use crate::progress::Progress;
use crate::Command;

/// A connected client, the current vg directory and the local directory.
pub struct Session {
    /// The cluster.
    pub client: Client,
    /// Current directory in vg (absolute).
    pub cwd: String,
    /// Local directory for relative local paths.
    pub local: PathBuf,
}

/// Formats a client error for a path, coreutils style: `/a/b: No such file or directory`.
fn at(path: &str) -> impl FnOnce(Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{path}: {}", e.describe())
}

fn kind_letter(kind: FileKind) -> char {
    match kind {
        FileKind::Dir => 'd',
        FileKind::File => 'f',
        FileKind::Symlink => 'l',
        FileKind::Fifo => 'p',
        FileKind::Socket => 's',
        FileKind::CharDevice(_) => 'c',
        FileKind::BlockDevice(_) => 'b',
    }
}

/// A device number as `ls -l` shows it: major, minor.
fn device(rdev: u32) -> String {
    format!("{}, {}", libc::major(rdev.into()), libc::minor(rdev.into()))
}

/// The kind of an inode as `stat` says it, with a device's numbers.
fn kind_name(kind: FileKind) -> String {
    match kind {
        FileKind::File => "regular file".into(),
        FileKind::Dir => "directory".into(),
        FileKind::Symlink => "symbolic link".into(),
        FileKind::Fifo => "fifo".into(),
        FileKind::Socket => "socket".into(),
        FileKind::CharDevice(rdev) => format!("character special file {}", device(rdev)),
        FileKind::BlockDevice(rdev) => format!("block special file {}", device(rdev)),
    }
}

fn state_name(state: StorageState) -> &'static str {
    match state {
        StorageState::Joining => "joining",
        StorageState::Active => "active",
        StorageState::Down => "down",
    }
}

/// `total` seconds over `count` occurrences, as a mean in µs or ms ("-" for none).
fn format_mean(total: f64, count: u64) -> String {
    if count == 0 {
        return "-".into();
    }
    let mean = total / count as f64;
    if mean < 1e-3 {
        format!("{:.0} µs", mean * 1e6)
    } else {
        format!("{:.1} ms", mean * 1e3)
    }
}

fn time(t: vg_wire::Timestamp) -> String {
    format!("{}.{:09}", t.secs, t.nanos)
}

impl Session {
    /// A session at `/`.
    pub fn new(client: Client, local: PathBuf) -> Self {
        Session {
            client,
            cwd: "/".into(),
            local,
        }
    }

    /// The absolute vg path of `path`.
    pub fn abs(&self, path: &str) -> String {
        absolute(&self.cwd, path)
    }

    fn local_path(&self, path: PathBuf) -> PathBuf {
        if path.is_absolute() {
            path
        } else {
            self.local.join(path)
        }
    }

    /// Attributes at a path, with a coreutils-style error.
    pub async fn stat_path(&self, path: &str) -> anyhow::Result<Attr> {
        self.client.resolve(path).await.map_err(at(path))
    }

    async fn parent_and_name<'a>(&self, path: &'a str) -> anyhow::Result<(Ino, &'a str)> {
        let (parent, name) = split_path(path)
            .with_context(|| format!("{path}: not a valid path for this operation"))?;
        let parent_attr = self.stat_path(parent).await?;
        if parent_attr.kind != FileKind::Dir {
            bail!("{parent}: Not a directory");
        }
        Ok((parent_attr.ino, name))
    }

    /// Runs one command.
    pub async fn run(&mut self, command: Command) -> anyhow::Result<()> {
        match command {
            Command::Usage => self.usage().await,
            Command::Du => self.du().await,
            Command::Ls { path } => self.ls(&self.abs(path.as_deref().unwrap_or("."))).await,
            Command::Stat { path } => self.stat(&self.abs(&path)).await,
            Command::Mkdir { parents, path } => self.mkdir(&self.abs(&path), parents).await,
            Command::Rmdir { recursive, path } => self.rmdir(&self.abs(&path), recursive).await,
            Command::Put { local, dfs } => {
                self.put(
                    self.local_path(local),
                    &self.abs(dfs.as_deref().unwrap_or(".")),
                )
                .await
            }
            Command::Get { dfs, local } => self.get(&self.abs(&dfs), local).await,
            Command::Rm { recursive, path } => self.rm(&self.abs(&path), recursive).await,
            Command::Mv { src, dst } => self.mv(&self.abs(&src), &self.abs(&dst)).await,
            Command::Status => self.status().await,
            Command::Fsck => self.fsck().await,
            Command::Certs(_) => bail!("certs: run it from the command line, not the shell"),
            Command::Nameserver(command) => self.nameserver(command).await,
        }
    }

    async fn usage(&self) -> anyhow::Result<()> {
        let status = self.client.status().await?;
        let active = status
            .storages
            .iter()
            .filter(|s| s.state == StorageState::Active);
        let (capacity, used) = active.fold((0, 0), |(c, u), s| (c + s.capacity, u + s.used));
        println!(
            "storages:    {} active of {}",
            status
                .storages
                .iter()
                .filter(|s| s.state == StorageState::Active)
                .count(),
            status.storages.len()
        );
        println!("capacity:    {}", format_size(capacity));
        println!("used:        {}", format_size(used));
        println!(
            "free:        {}",
            format_size(capacity.saturating_sub(used))
        );
        println!("replication: {}", status.replication);
        println!(
            "usable free: {} (free / replication)",
            format_size(capacity.saturating_sub(used) / status.replication.max(1) as u64)
        );
        Ok(())
    }

    async fn du(&self) -> anyhow::Result<()> {
        let status = self.client.status().await?;
        // FREE is what the storage holds nothing in; GARBAGE, held by blocks no file
        // references, is reclaimed before a write would fail.
        println!(
            "{:<12} {:<22} {:>12} {:>12} {:<8} {:>8} {:>12}",
            "NAME", "ADDRESS", "FREE", "CAPACITY", "STATE", "BLOCKS", "GARBAGE"
        );
        for s in &status.storages {
            println!(
                "{:<12} {:<22} {:>12} {:>12} {:<8} {:>8} {:>12}",
                s.name,
                s.addr.to_string(),
                format_size(s.capacity.saturating_sub(s.used)),
                format_size(s.capacity),
                state_name(s.state),
                s.blocks,
                format_size(s.garbage)
            );
        }
        Ok(())
    }

    /// Names of the storages holding any block of a file.
    async fn holders(&self, ino: Ino) -> anyhow::Result<String> {
        let layout = self.client.layout(ino).await?;
        let names: BTreeSet<String> = layout
            .locations
            .iter()
            .flat_map(|(_, locations)| locations)
            .map(|l| l.name.clone())
            .collect();
        Ok(names.into_iter().collect::<Vec<_>>().join(","))
    }

    async fn ls(&self, path: &str) -> anyhow::Result<()> {
        let attr = self.stat_path(path).await?;
        let entries = if attr.kind == FileKind::Dir {
            self.client.readdir_all(attr.ino).await.map_err(at(path))?
        } else {
            vec![(
                split_path(path)
                    .map(|(_, n)| n)
                    .unwrap_or("/")
                    .as_bytes()
                    .to_vec(),
                attr,
            )]
        };
        for (name, attr) in entries {
            let name = String::from_utf8_lossy(&name);
            let kind = kind_letter(attr.kind);
            match attr.kind {
                FileKind::File => println!(
                    "{kind} {name:<30} {:>12} {}",
                    attr.size,
                    self.holders(attr.ino).await?
                ),
                FileKind::Dir => println!("{kind} {name:<30} {:>12}", "-"),
                FileKind::Fifo | FileKind::Socket => println!("{kind} {name:<30} {:>12}", 0),
                FileKind::CharDevice(rdev) | FileKind::BlockDevice(rdev) => {
                    println!("{kind} {name:<30} {:>12}", device(rdev))
                }
                FileKind::Symlink => {
                    let target = self.client.readlink(attr.ino).await.map_err(at(path))?;
                    println!(
                        "{kind} {name:<30} {:>12} -> {}",
                        attr.size,
                        String::from_utf8_lossy(&target)
                    );
                }
            }
        }
        Ok(())
    }

    async fn stat(&self, path: &str) -> anyhow::Result<()> {
        let attr = self.stat_path(path).await?;
        println!("path:   {path}");
        println!("inode:  {}", attr.ino);
        println!("type:   {}", kind_name(attr.kind));
        println!("size:   {}", attr.size);
        println!("mode:   {:04o}", attr.perm);
        println!("uid:    {}", attr.uid);
        println!("gid:    {}", attr.gid);
        println!("links:  {}", attr.nlink);
        println!("atime:  {}", time(attr.atime));
        println!("mtime:  {}", time(attr.mtime));
        println!("ctime:  {}", time(attr.ctime));
        if attr.kind == FileKind::File {
            let layout = self.client.layout(attr.ino).await.map_err(at(path))?;
            println!(
                "blocks: {} (block size {})",
                layout.blocks.len(),
                layout.block_size
            );
            let locations: HashMap<BlockId, Vec<Location>> = layout.locations.into_iter().collect();
            for (i, slices) in layout.blocks.iter().enumerate() {
                if slices.is_empty() {
                    println!("  {i:>6} (hole)");
                }
                // One line per slice: where in the block, which blob, and its replicas.
                for slice in slices {
                    let holders = locations.get(&slice.blob).map_or(&[][..], Vec::as_slice);
                    let names: Vec<&str> = holders.iter().map(|l| l.name.as_str()).collect();
                    println!(
                        "  {i:>6} {:>9}+{:<9} {}@{} replicas={} [{}]",
                        slice.at,
                        slice.len,
                        slice.blob,
                        slice.blob_off,
                        holders.len(),
                        names.join(",")
                    );
                }
            }
        }
        Ok(())
    }

    async fn mkdir(&self, path: &str, parents: bool) -> anyhow::Result<()> {
        if parents {
            let mut ino = ROOT_INO;
            let mut sofar = String::new();
            for part in path.split('/').filter(|p| !p.is_empty()) {
                sofar = format!("{sofar}/{part}");
                ino = match self.client.lookup(ino, part.as_bytes()).await {
                    Ok(attr) if attr.kind == FileKind::Dir => attr.ino,
                    Ok(_) => bail!("{sofar}: Not a directory"),
                    Err(e) if e.code() == vg_wire::ErrorCode::NotFound => {
                        self.client
                            .mkdir(ino, part.as_bytes(), 0o755, Maker::ROOT)
                            .await
                            .map_err(at(&sofar))?
                            .ino
                    }
                    Err(e) => return Err(at(&sofar)(e)),
                };
            }
            return Ok(());
        }
        let (parent, name) = self.parent_and_name(path).await?;
        self.client
            .mkdir(parent, name.as_bytes(), 0o755, Maker::ROOT)
            .await
            .map_err(at(path))?;
        Ok(())
    }

    /// Removes the content of a directory, depth first.
    async fn remove_tree(&self, ino: Ino, path: &str) -> anyhow::Result<()> {
        for (name, attr) in self.client.readdir_all(ino).await.map_err(at(path))? {
            let child = format!(
                "{}/{}",
                path.trim_end_matches('/'),
                String::from_utf8_lossy(&name)
            );
            if attr.kind == FileKind::Dir {
                Box::pin(self.remove_tree(attr.ino, &child)).await?;
                self.client.rmdir(ino, &name).await.map_err(at(&child))?;
            } else {
                self.client.unlink(ino, &name).await.map_err(at(&child))?;
            }
        }
        Ok(())
    }

    async fn rmdir(&self, path: &str, recursive: bool) -> anyhow::Result<()> {
        let (parent, name) = self.parent_and_name(path).await?;
        let attr = self.stat_path(path).await?;
        if attr.kind != FileKind::Dir {
            bail!("{path}: Not a directory");
        }
        if recursive {
            self.remove_tree(attr.ino, path).await?;
        }
        self.client
            .rmdir(parent, name.as_bytes())
            .await
            .map_err(at(path))
    }

    async fn rm(&self, path: &str, recursive: bool) -> anyhow::Result<()> {
        let attr = self.stat_path(path).await?;
        if attr.kind == FileKind::Dir {
            if !recursive {
                bail!("{path}: Is a directory (use rmdir, or rm -r)");
            }
            return self.rmdir(path, true).await;
        }
        let (parent, name) = self.parent_and_name(path).await?;
        self.client
            .unlink(parent, name.as_bytes())
            .await
            .map(drop)
            .map_err(at(path))
    }

    /// If `path` is an existing directory, the path of `name` inside it.
    async fn inside_if_dir(&self, path: &str, name: &str) -> String {
        match self.client.resolve(path).await {
            Ok(attr) if attr.kind == FileKind::Dir => {
                format!("{}/{name}", path.trim_end_matches('/'))
            }
            _ => path.to_string(),
        }
    }

    async fn put(&self, local: PathBuf, dfs: &str) -> anyhow::Result<()> {
        let meta = std::fs::metadata(&local).with_context(|| format!("{}", local.display()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file", local.display());
        }
        let name =
            local_name(&local).with_context(|| format!("{}: no file name", local.display()))?;
        let dfs = self.inside_if_dir(dfs, &name).await;
        let (parent, file_name) = self.parent_and_name(&dfs).await?;
        let attr = self
            .client
            .create(parent, file_name.as_bytes(), 0o644, Maker::ROOT, false)
            .await
            .map_err(at(&dfs))?;
        if attr.kind != FileKind::File {
            bail!("{dfs}: Is a directory");
        }
        let size = std::fs::metadata(&local).map_or(0, |m| m.len());
        let mut progress = Progress::new(&local.display().to_string(), size);
        let put = self
            .client
            .put_file(&local, attr.ino, |n| progress.advance(n))
            .await;
        progress.finish();
        put.map_err(at(&dfs))?;
        // A copy tool reports success once the copy is on disk.
        self.client.sync().await.map_err(at(&dfs))?;
        Ok(())
    }

    async fn get(&self, dfs: &str, local: Option<PathBuf>) -> anyhow::Result<()> {
        let attr = self.stat_path(dfs).await?;
        if attr.kind != FileKind::File {
            bail!("{dfs}: not a regular file");
        }
        let name = split_path(dfs)
            .map(|(_, n)| n.to_string())
            .unwrap_or_default();
        let mut target = self.local_path(local.unwrap_or_default());
        if target.is_dir() {
            target = target.join(name);
        }
        let mut progress = Progress::new(&target.display().to_string(), attr.size);
        let got = self
            .client
            .get_file(attr.ino, &target, |n| progress.advance(n))
            .await;
        progress.finish();
        got.map_err(|e| anyhow::anyhow!("{dfs}: {}", e.describe()))?;
        Ok(())
    }

    async fn mv(&self, src: &str, dst: &str) -> anyhow::Result<()> {
        let (src_parent, src_name) = self.parent_and_name(src).await?;
        let dst = self.inside_if_dir(dst, src_name).await;
        let (dst_parent, dst_name) = self.parent_and_name(&dst).await?;
        self.client
            .rename(
                src_parent,
                src_name.as_bytes(),
                dst_parent,
                dst_name.as_bytes(),
                false,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{src} -> {dst}: {}", e.describe()))
    }

    async fn nameserver(&self, command: crate::NameserverCommand) -> anyhow::Result<()> {
        use crate::NameserverCommand::*;
        let change = match command {
            List => None,
            Add { id, member } => {
                let (name, addr) = member.split_once('@').unwrap_or(("nameserver", &member));
                Some(ns::Request::AddMember {
                    id,
                    name: name.to_string(),
                    addr: addr.to_string(),
                })
            }
            Remove { id } => Some(ns::Request::RemoveMember { id }),
        };
        let group = self.client.group(change).await?;
        println!("term {}, committed up to {}", group.term, group.committed);
        println!(
            "{:>4}  {:<12} {:<24} {:<9} {:>10}",
            "id", "name", "address", "role", "log"
        );
        for m in &group.members {
            let log = m.log.map_or("-".to_string(), |l| l.to_string());
            println!(
                "{:>4}  {:<12} {:<24} {:<9} {:>10}",
                m.id, m.name, m.addr, m.role, log
            );
        }
        Ok(())
    }

    async fn status(&self) -> anyhow::Result<()> {
        let status = self.client.status().await?;
        let active = status
            .storages
            .iter()
            .filter(|s| s.state == StorageState::Active)
            .count();
        println!(
            "storages:          {active} active, {} known",
            status.storages.len()
        );
        for s in &status.storages {
            println!(
                "  {:<12} {:<8} {:>10} of {:>10} used ({} garbage), {} blocks",
                s.name,
                state_name(s.state),
                format_size(s.used),
                format_size(s.capacity),
                format_size(s.garbage),
                s.blocks
            );
        }
        println!("replication:       {}", status.replication);
        println!(
            "block size:        {}",
            format_size(status.block_size as u64)
        );
        println!("inodes:            {}", status.inodes);
        println!("blocks:            {}", status.blocks);
        println!("under-replicated:  {}", status.under_replicated);
        println!("missing:           {}", status.missing);
        println!("replicating:       {}", status.replicating);
        println!("garbage:           {}", format_size(status.garbage));
        println!(
            "open files:        {} in {} sessions, {} of them unlinked",
            status.open_files, status.sessions, status.orphans
        );
        println!(
            "locks:             {} held, {} waiting",
            status.locks, status.lock_waiters
        );
        println!(
            "log:               change {} written, {} on disk; {} syncs, {} each on average",
            status.log_written,
            status.log_durable,
            status.log_syncs,
            format_mean(status.log_sync_seconds, status.log_syncs)
        );
        println!("requests:          answered   errors  mean time");
        for op in &status.requests {
            println!(
                "  {:<16} {:>9} {:>8} {:>10}",
                op.op,
                op.answered,
                op.errors,
                format_mean(op.seconds, op.answered)
            );
        }
        Ok(())
    }

    async fn fsck(&self) -> anyhow::Result<()> {
        let status = self.client.status().await?;
        let blocks = self.client.list_blocks().await?;
        let mut problems = Vec::new();
        let mut by_storage: BTreeMap<String, (Location, Vec<BlockId>)> = BTreeMap::new();
        for block in &blocks {
            let wanted = status.replication.min(block.wanted.max(1));
            if (block.locations.len() as u32) < wanted {
                let names: Vec<&str> = block.locations.iter().map(|l| l.name.as_str()).collect();
                problems.push(format!(
                    "block {}: {} of {wanted} replicas [{}]",
                    block.id,
                    block.locations.len(),
                    names.join(",")
                ));
            }
            for location in &block.locations {
                by_storage
                    .entry(location.name.clone())
                    .or_insert_with(|| (location.clone(), Vec::new()))
                    .1
                    .push(block.id);
            }
        }
        let mut verified = 0;
        for (name, (location, ids)) in by_storage {
            for batch in ids.chunks(1000) {
                match self.client.verify(&location, batch.to_vec()).await {
                    Ok(results) => {
                        for (id, ok) in batch.iter().zip(results) {
                            if ok {
                                verified += 1;
                            } else {
                                problems.push(format!(
                                    "block {id}: replica on {name} is missing or corrupt"
                                ));
                            }
                        }
                    }
                    Err(e) => problems.push(format!(
                        "storage {name}: cannot verify {} blocks: {e}",
                        batch.len()
                    )),
                }
            }
        }
        for problem in &problems {
            println!("{problem}");
        }
        println!(
            "fsck: {} blocks, {verified} replicas verified, {} problems",
            blocks.len(),
            problems.len()
        );
        if !problems.is_empty() {
            bail!("fsck found {} problems", problems.len());
        }
        Ok(())
    }
}
