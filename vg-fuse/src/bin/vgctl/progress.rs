//! vgctl's progress line for `put` and `get`.

use std::io::IsTerminal;

/// A progress line on stderr, shown only on a terminal.
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    shown: bool,
}

impl Progress {
    /// A progress line for `label` of `total` bytes; silent unless stderr is a terminal.
    pub fn new(label: &str, total: u64) -> Self {
        Progress {
            label: label.to_string(),
            total,
            done: 0,
            shown: std::io::stderr().is_terminal(),
        }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        if self.shown {
            let pct = (self.done * 100).checked_div(self.total).unwrap_or(100);
            let bar = "#".repeat((pct / 5) as usize);
            eprint!(
                "\r{} [{bar:<20}] {pct:3}% {}/{}",
                self.label,
                vg_wire::size::format_size(self.done),
                vg_wire::size::format_size(self.total)
            );
        }
    }

    pub fn finish(&self) {
        if self.shown {
            eprintln!();
        }
    }
}
