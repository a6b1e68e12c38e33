//! `vg-fuse` as a mount helper: installed as `/sbin/mount.vg` (or `mount.fuse.vg`),
//! mount(8) runs it for `mount -t vg HOST:PORT DIR -o OPTIONS` and for fstab lines of
//! type `vg`, as `mount.vg SPEC DIR [-sfnv] [-o OPTIONS]`. The arguments become
//! `vg-fuse`'s own flags (every flag is an `-o` option), and the mount runs in the
//! background, as a mount helper must.

/// Options mount(8), systemd or the kernel's generic mount code act on; the helper has
/// nothing to do for them (`allow_other` is on whenever root mounts).
const GENERIC: [&str; 20] = [
    "rw",
    "defaults",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "_netdev",
    "nofail",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "async",
    "noatime",
    "allow_other",
];

/// Whether the program was started under a mount helper's name.
pub fn invoked_as_helper(argv0: &str) -> bool {
    let name = argv0.rsplit('/').next().unwrap_or(argv0);
    name == "mount.vg" || name == "mount.fuse.vg"
}

/// Why the helper's arguments cannot become a mount.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    /// SPEC or DIR is missing.
    #[error("usage: mount.vg HOST[:PORT] DIR [-sfnv] [-o OPTIONS]")]
    Usage,
    /// The port in SPEC is not a port.
    #[error("{spec}: the port must be a number from 1 to 65535")]
    Port {
        /// The SPEC given.
        spec: String,
    },
    /// A flag mount(8) does not pass.
    #[error("unknown flag {0} (mount passes -s, -f, -n, -v, -o and -t)")]
    Flag(String),
}

/// `vg-fuse`'s command line (its program name first) for a helper's arguments (without
/// its own name), or `None` for a fake mount (`-f`: nothing to do).
pub fn translate(args: &[String]) -> Result<Option<Vec<String>>, HelperError> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut fake = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-o" => options.extend(rest.next().ok_or(HelperError::Usage)?.split(',')),
            // The file system type (vg, fuse.vg) and namespace: this helper is the type.
            "-t" | "-N" => {
                rest.next().ok_or(HelperError::Usage)?;
            }
            "-f" => fake = true,
            "-s" | "-n" | "-v" => {}
            flag if flag.starts_with("-o") => options.extend(flag[2..].split(',')),
            flag if flag.starts_with('-') => return Err(HelperError::Flag(flag.to_string())),
            _ => positional.push(arg.clone()),
        }
    }
    let [spec, dir] = positional.as_slice() else {
        return Err(HelperError::Usage);
    };
    let (host, port) = match spec.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') || host.starts_with('[') => {
            let port: u16 = port
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| HelperError::Port { spec: spec.clone() })?;
            (host.trim_start_matches('[').trim_end_matches(']'), port)
        }
        _ => (spec.as_str(), 8000),
    };
    let mut argv: Vec<String> = ["vg-fuse", dir, "--daemon", "--ns-hostname", host]
        .into_iter()
        .map(String::from)
        .chain(["--ns-port".to_string(), port.to_string()])
        .collect();
    for option in options.into_iter().filter(|o| !o.is_empty()) {
        let (key, value) = match option.split_once('=') {
            Some((key, value)) => (key, Some(value)),
            None => (option, None),
        };
        if GENERIC.contains(&key) || key.starts_with("x-") || key == "comment" {
            continue;
        }
        let flag = match key {
            "ro" => "read-only",
            "ca" => "ca-cert",
            "cert" => "certfile",
            "key" => "keyfile",
            other => other,
        };
        argv.push(format!("--{}", flag.replace('_', "-")));
        argv.extend(value.map(String::from));
    }
    Ok((!fake).then_some(argv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn fstab_options_become_flags() {
        let argv = translate(&strings(&[
            "ns.example:8100",
            "/mnt/vg",
            "-o",
            "rw,_netdev,nofail,x-systemd.automount,ca=/etc/vg/ca.crt,cert=/etc/vg/c.crt,key=/etc/vg/c.key,ro,attr_ttl=2s,sync-on-close",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            argv,
            strings(&[
                "vg-fuse",
                "/mnt/vg",
                "--daemon",
                "--ns-hostname",
                "ns.example",
                "--ns-port",
                "8100",
                "--ca-cert",
                "/etc/vg/ca.crt",
                "--certfile",
                "/etc/vg/c.crt",
                "--keyfile",
                "/etc/vg/c.key",
                "--read-only",
                "--attr-ttl",
                "2s",
                "--sync-on-close",
            ])
        );
    }

    #[test]
    fn specs_flags_and_mistakes() {
        let argv = translate(&strings(&["host", "/m", "-n", "-t", "fuse.vg"]))
            .unwrap()
            .unwrap();
        assert_eq!(
            argv[3..7],
            strings(&["--ns-hostname", "host", "--ns-port", "8000"])
        );
        let argv = translate(&strings(&["[::1]:9000", "/m"])).unwrap().unwrap();
        assert_eq!(
            argv[3..7],
            strings(&["--ns-hostname", "::1", "--ns-port", "9000"])
        );
        assert_eq!(translate(&strings(&["h", "/m", "-f"])), Ok(None));
        assert_eq!(translate(&strings(&["h"])), Err(HelperError::Usage));
        assert_eq!(
            translate(&strings(&["h:port", "/m"])),
            Err(HelperError::Port {
                spec: "h:port".into()
            })
        );
        assert_eq!(
            translate(&strings(&["h", "/m", "-z"])),
            Err(HelperError::Flag("-z".into()))
        );
        assert!(invoked_as_helper("/sbin/mount.vg"));
        assert!(invoked_as_helper("mount.fuse.vg"));
        assert!(!invoked_as_helper("/usr/bin/vg-fuse"));
    }
}
