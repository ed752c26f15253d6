//! Fail-stop (DESIGN.md): a panic on any thread ends the whole process at once, with a
//! non-zero exit and one line on stderr, so a supervisor restarts it and recovery takes
//! over. Without this a panic would end only its core's executor: its listener would
//! keep accepting connections nobody answers, and shards on it would never reply.

use std::panic::PanicHookInfo;

/// The exit status of a process that stopped on a panic (Rust's own panic status).
pub const PANIC_EXIT_CODE: i32 = 101;
/// A panic message is cut to this many bytes in the log line.
const PANIC_MESSAGE_BYTES_MAX: usize = 1024;

/// Installs the panic hook: log one line, then `_exit` without unwinding, running
/// destructors or waiting for any other thread.
pub fn install() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("{}", panic_line(info));
        // SAFETY: _exit ends the process immediately; nothing runs after it.
        unsafe { libc::_exit(PANIC_EXIT_CODE) }
    }));
}

/// `payd: fatal: thread 'payd-core1' panicked at src/x.rs:1:2: message; ...`, on one
/// line whatever the message holds.
fn panic_line(info: &PanicHookInfo<'_>) -> String {
    let thread = std::thread::current();
    let location = info
        .location()
        .map(|location| location.to_string())
        .unwrap_or_else(|| "an unknown place".to_string());
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format_panic_line(thread.name().unwrap_or("unnamed"), &location, message)
}

fn format_panic_line(thread: &str, location: &str, message: &str) -> String {
    let mut message = message.escape_debug().to_string();
    if message.len() > PANIC_MESSAGE_BYTES_MAX {
        let mut end = PANIC_MESSAGE_BYTES_MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    format!(
        "payd: fatal: thread '{thread}' panicked at {location}: {message}; \
         stopping the process (fail-stop)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_one_line_and_bounded() {
        let line = format_panic_line("payd-core1", "src/x.rs:1:2", "left: 1\nright: 2");
        assert_eq!(
            line,
            "payd: fatal: thread 'payd-core1' panicked at src/x.rs:1:2: left: 1\\nright: 2; \
             stopping the process (fail-stop)"
        );
        let long = format_panic_line("t", "l", &"é".repeat(PANIC_MESSAGE_BYTES_MAX));
        assert!(!long.contains('\n'));
        let message = long
            .strip_prefix("payd: fatal: thread 't' panicked at l: ")
            .and_then(|rest| rest.strip_suffix("...; stopping the process (fail-stop)"))
            .expect("the line's frame");
        assert!(message.len() <= PANIC_MESSAGE_BYTES_MAX);
        assert!(message.len() > PANIC_MESSAGE_BYTES_MAX - 4);
    }
}
