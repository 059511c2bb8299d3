//! The checks on a file a command was asked to write (`eval --logits`, `export --out`,
//! `profile --trace`), made before any work so that a bad path costs nothing: the write would
//! be refused (see [`atomic`](super::atomic) for what it may replace), its folder cannot take
//! it, it is one of the files the command reads, or it holds a checkpoint. Files the trainer
//! writes in its own run folder are not checked here: replacing its checkpoints is its job.

use super::atomic;
use super::checkpoint::MAGIC;
use crate::error::{Error, Result};
use std::io::Read;
use std::path::Path;

/// Refuses `out`, the value of `flag`, unless it can be written and replacing it loses
/// nothing: it is a regular file or nothing, in an existing folder this process can write, it
/// is none of `reads` (compared as files, so another name or a hard link of an input counts)
/// and no sliceout checkpoint.
pub fn check_output(flag: &str, out: &Path, reads: &[&Path]) -> Result<()> {
    let refuse = |expected: String| Err(Error::flag(flag, out.display(), expected));
    let folder = atomic::folder_of(out);
    if !folder.is_dir() {
        let why = if folder.exists() { "is not a folder" } else { "does not exist" };
        return refuse(format!("a file in an existing folder ({} {why})", folder.display()));
    }
    match atomic::obstacle(out) {
        Ok(None) => {}
        Ok(Some(what)) => return refuse(format!("a regular file to write, but it is {what}")),
        Err(e) => return refuse(format!("a file to write ({e})")),
    }
    if let Err(e) = atomic::probe_folder(out) {
        return refuse(format!("a file in a folder this process can write ({}: {e})", folder.display()));
    }
    if let Some(input) = reads.iter().find(|r| same_file(out, r)) {
        return refuse(format!("a file other than {}, which this command reads", input.display()));
    }
    if holds_checkpoint(out) {
        return refuse(
            "a file other than a sliceout checkpoint (it holds one; remove it first or pick another name)".into(),
        );
    }
    Ok(())
}

/// Whether `a` and `b` both exist and are the same file (or folder), whatever the names.
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        matches!((a.metadata(), b.metadata()), (Ok(x), Ok(y)) if (x.dev(), x.ino()) == (y.dev(), y.ino()))
    }
    #[cfg(not(unix))]
    {
        matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    }
}

/// Whether `path` is a regular file that starts with the checkpoint magic. Anything else is
/// not opened: opening a FIFO would wait for a writer.
pub fn holds_checkpoint(path: &Path) -> bool {
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut head = [0u8; MAGIC.len()];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && head == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::scratch;
    use std::fs;

    fn refusal(out: &Path, reads: &[&Path]) -> String {
        check_output("--out", out, reads).unwrap_err().to_string()
    }

    #[test]
    fn inputs_checkpoints_and_missing_folders_are_refused() {
        let dir = scratch("output-checks");
        let input = dir.join("in.bin");
        fs::write(&input, b"data").unwrap();
        // By another spelling and through a hard link, the input is still the input.
        fs::create_dir(dir.join("sub")).unwrap();
        let spelled = dir.join("sub").join("..").join("in.bin");
        let linked = dir.join("linked.bin");
        fs::hard_link(&input, &linked).unwrap();
        for out in [&input, &spelled, &linked] {
            let msg = refusal(out, &[&input]);
            assert!(msg.contains("--out") && msg.contains("a file other than") && msg.contains("in.bin"), "{msg}");
        }
        let ck = dir.join("model.ckpt");
        fs::write(&ck, [&MAGIC[..], b"rest"].concat()).unwrap();
        assert!(refusal(&ck, &[]).contains("a file other than a sliceout checkpoint"));
        let missing = dir.join("missing").join("out.bin");
        assert!(refusal(&missing, &[]).contains("missing does not exist"));
        let msg = refusal(&input.join("out.bin"), &[]);
        assert!(msg.contains("in.bin is not a folder"), "{msg}");
        let msg = refusal(&dir.join("sub"), &[]);
        assert!(msg.contains("expected a regular file to write, but it is a folder"), "{msg}");
        // Other regular files, short ones included, and new names are fine.
        fs::write(dir.join("short"), b"SL").unwrap();
        for out in [dir.join("short"), dir.join("new.bin"), input.clone()] {
            check_output("--out", &out, &[&ck]).unwrap();
        }
        assert_eq!(fs::read(&input).unwrap(), b"data");
        fs::remove_dir_all(&dir).unwrap();
    }
}
