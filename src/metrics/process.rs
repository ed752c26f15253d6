//! The process's own figures under the standard `process_*` names (as Prometheus' client
//! libraries export them), and payd's build info. Read from /proc at each scrape.

use std::fmt::Write;

/// What /proc says about this process; a figure that could not be read is 0.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessFigures {
    pub resident_memory_bytes: u64,
    pub virtual_memory_bytes: u64,
    pub cpu_seconds: f64,
    pub open_fds: u64,
    pub max_fds: u64,
    /// Unix time the process started, in seconds.
    pub start_time_seconds: f64,
}

impl ProcessFigures {
    pub fn read() -> ProcessFigures {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let mut pages = statm
            .split_whitespace()
            .map(|field| field.parse::<u64>().unwrap_or(0));
        let virtual_pages = pages.next().unwrap_or(0);
        let resident_pages = pages.next().unwrap_or(0);
        let page_bytes = system_value(libc::_SC_PAGESIZE).unwrap_or(4096);
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let ticks = StatTicks::parse(&stat).unwrap_or_default();
        let ticks_per_second = system_value(libc::_SC_CLK_TCK).unwrap_or(100).max(1) as f64;
        let boot_time_seconds = boot_time_seconds().unwrap_or(0);
        ProcessFigures {
            resident_memory_bytes: resident_pages * page_bytes,
            virtual_memory_bytes: virtual_pages * page_bytes,
            cpu_seconds: (ticks.user + ticks.system) as f64 / ticks_per_second,
            open_fds: open_fds(),
            max_fds: max_fds(),
            start_time_seconds: boot_time_seconds as f64 + ticks.start as f64 / ticks_per_second,
        }
    }

    pub fn render(&self, out: &mut String) {
        let figures: [(&str, &str, &str, f64); 6] = [
            (
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                self.resident_memory_bytes as f64,
            ),
            (
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                self.virtual_memory_bytes as f64,
            ),
            (
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
                self.cpu_seconds,
            ),
            (
                "process_open_fds",
                "gauge",
                "Number of open file descriptors.",
                self.open_fds as f64,
            ),
            (
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                self.max_fds as f64,
            ),
            (
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds.",
                self.start_time_seconds,
            ),
        ];
        for (name, kind, help, value) in figures {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
    }
}

/// `payd_build_info`: always 1, the version as a label (Prometheus' convention).
pub fn render_build_info(out: &mut String) {
    let name = "payd_build_info";
    let _ = writeln!(
        out,
        "# HELP {name} The payd build: 1, labelled with its version.\n# TYPE {name} gauge\n\
         {name}{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
}

/// Clock ticks from /proc/self/stat: CPU time in user and system mode, and the start
/// time after boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StatTicks {
    user: u64,
    system: u64,
    start: u64,
}

impl StatTicks {
    /// Fields 14, 15 and 22 of proc(5), counted after the command name, which sits in
    /// parentheses and may itself hold spaces and parentheses.
    fn parse(stat: &str) -> Option<StatTicks> {
        let after_command = &stat[stat.rfind(')')? + 1..];
        // The first field after the command is field 3 (state).
        let fields: Vec<&str> = after_command.split_whitespace().collect();
        let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
        Some(StatTicks {
            user: field(14)?,
            system: field(15)?,
            start: field(22)?,
        })
    }
}

fn boot_time_seconds() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|value| value.trim().parse().ok())
}

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |entries| entries.count() as u64)
}

fn max_fds() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let result = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    if result == 0 {
        limit.rlim_cur
    } else {
        0
    }
}

fn system_value(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf has no preconditions.
    let value = unsafe { libc::sysconf(name) };
    u64::try_from(value).ok().filter(|&value| value > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (pay d) (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 50 0 0 20 0 3 0 987654 100000 500 18446744073709551615";
        let ticks = StatTicks::parse(stat).unwrap();
        assert_eq!(
            ticks,
            StatTicks {
                user: 250,
                system: 50,
                start: 987654
            }
        );
        assert_eq!(StatTicks::parse("garbage"), None);
    }

    #[test]
    fn this_process_has_memory_fds_and_a_start_time() {
        let figures = ProcessFigures::read();
        assert!(figures.resident_memory_bytes > 0);
        assert!(figures.virtual_memory_bytes >= figures.resident_memory_bytes);
        assert!(figures.open_fds >= 3, "stdin, stdout, stderr at least");
        assert!(figures.max_fds >= figures.open_fds);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        // Started this test run: within the last day, not in the future.
        assert!(
            (now - 86_400.0..=now + 1.0).contains(&figures.start_time_seconds),
            "start {} now {now}",
            figures.start_time_seconds
        );
    }
}
