//! The interactive shell: the original client's prompt, history, `cd`, `pwd`, `local`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use rustyline::error::ReadlineError;
use vg_wire::FileKind;

use crate::commands::Session;
use crate::Command;
use vg_fuse::args::ConnArgs;

#[derive(Parser, Debug)]
#[command(name = "", no_binary_name = true, disable_help_flag = true)]
struct Line {
    #[command(subcommand)]
    command: ShellCommand,
}

#[derive(Subcommand, Debug)]
enum ShellCommand {
    #[command(flatten)]
    Common(Command),
    /// Change the current directory.
    Cd {
        /// Directory [default: /].
        path: Option<String>,
    },
    /// Print the current directory.
    Pwd,
    /// List the local directory (or change it, given a path).
    Local {
        /// New local directory.
        path: Option<PathBuf>,
    },
    /// Leave the shell.
    #[command(alias = "quit")]
    Exit,
}

/// Splits a line into words, honouring single and double quotes and backslashes.
fn split_words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None | Some('"'), '\\') => {
                word.push(chars.next().ok_or("trailing backslash")?);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (_, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err("unterminated quote".into());
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

async fn run_line(session: &mut Session, line: &str) -> anyhow::Result<bool> {
    let words = split_words(line).map_err(anyhow::Error::msg)?;
    if words.is_empty() {
        return Ok(true);
    }
    let parsed = match Line::try_parse_from(&words) {
        Ok(parsed) => parsed,
        Err(e) => {
            // clap's own text: usage, help, or which argument was wrong.
            print!("{}", e.render());
            return Ok(true);
        }
    };
    match parsed.command {
        ShellCommand::Common(command) => session.run(command).await?,
        ShellCommand::Cd { path } => {
            let target = session.abs(path.as_deref().unwrap_or("/"));
            let attr = session.stat_path(&target).await?;
            anyhow::ensure!(attr.kind == FileKind::Dir, "{target}: Not a directory");
            session.cwd = target;
        }
        ShellCommand::Pwd => println!("{}", session.cwd),
        ShellCommand::Local { path: Some(path) } => {
            let path = if path.is_absolute() {
                path
            } else {
                session.local.join(path)
            };
            anyhow::ensure!(path.is_dir(), "{}: not a local directory", path.display());
            session.local = path;
        }
        ShellCommand::Local { path: None } => {
            let mut names: Vec<String> = std::fs::read_dir(&session.local)
                .map_err(|e| anyhow::anyhow!("{}: {e}", session.local.display()))?
                .filter_map(|entry| entry.ok())
                .map(|entry| {
                    let suffix = if entry.path().is_dir() { "/" } else { "" };
                    format!("{}{suffix}", entry.file_name().to_string_lossy())
                })
                .collect();
            names.sort();
            println!("{}:", session.local.display());
            for name in names {
                println!("  {name}");
            }
        }
        ShellCommand::Exit => return Ok(false),
    }
    Ok(true)
}

/// Runs the interactive shell until `exit` or end of input.
pub async fn run(conn: &ConnArgs, local: PathBuf) -> anyhow::Result<()> {
    let client = conn.connect().await?;
    let mut session = Session::new(client, local);
    let mut editor = rustyline::DefaultEditor::new()?;
    loop {
        let prompt = format!("vg:{}$ ", session.cwd);
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(ReadlineError::Eof) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let _ = editor.add_history_entry(line.as_str());
        match run_line(&mut session, &line).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => eprintln!("vgctl: {e:#}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words() {
        assert_eq!(
            split_words(r#"put "a b" c\ d 'e"f'"#).unwrap(),
            vec!["put", "a b", "c d", "e\"f"]
        );
        assert!(split_words("put 'x").is_err());
        assert_eq!(split_words("   ").unwrap(), Vec::<String>::new());
    }
}
