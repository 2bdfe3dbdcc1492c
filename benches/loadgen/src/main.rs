//! Open-loop HTTP/1.1 load at a fixed request rate, for comparing latency at equal load (the
//! `latency` scenario of benches/vs-nginx). wrk is closed-loop: each connection sends its next
//! request when the last answer arrives, so at saturation its p99 mostly says how fast the
//! slowest process on the load's CPU was in that run. Here every request has a due time, set
//! before the run (request `k` of connection `c` at `(k * connections + c) / rate` seconds), so
//! both servers get the same arrivals and the latency compares what each adds.
//!
//! A request's latency counts from its due time when its connection was still waiting for the
//! previous answer then (the server held it up: coordinated omission, as wrk2 corrects it), and
//! from its actual send otherwise, so this tool's timer (tokio's, 1 ms ticks) adds nothing.
//!
//! A connect or an exchange that takes over 5 s is a failure, so every run ends by itself; failures
//! of requests due after the warm-up are counted. "bcs-loadgen: measuring" and "bcs-loadgen:
//! measured" on stderr mark the measured seconds, for a caller reading the server's CPU.
//!
//! `bcs-loadgen --url URL --rate R [--connections N] [--duration S] [--warmup S] [--header "K: V"]...
//! [--ca PEM]`; prints one JSON line. A benchmark tool, for loopback.
mod exchange;

use std::time::{Duration, Instant};

use exchange::{Connection, Target};

struct Args {
    target: Target,
    rate: f64,
    connections: usize,
    duration: Duration,
    warmup: Duration,
}

const USAGE: &str = "bcs-loadgen --url http[s]://HOST:PORT/PATH --rate REQ_PER_S [--connections N] \
                     [--duration S] [--warmup S] [--header 'Name: value']... [--ca PEM]";

fn parse_args() -> Result<Args, String> {
    let (mut url, mut rate, mut ca, mut headers) = (None, None, None, Vec::new());
    let (mut connections, mut duration, mut warmup) = (64usize, 10.0f64, 1.0f64);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value; usage: {USAGE}"))?;
        let number = || value.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0);
        match flag.as_str() {
            "--url" => url = Some(value.clone()),
            "--rate" => rate = Some(number().filter(|r| *r > 0.0).ok_or("--rate must be a positive number")?),
            "--connections" => {
                connections = value.parse().ok().filter(|n| *n > 0).ok_or("--connections must be > 0")?
            }
            "--duration" => duration = number().filter(|d| *d > 0.0).ok_or("--duration must be > 0 seconds")?,
            "--warmup" => warmup = number().ok_or("--warmup must be >= 0 seconds")?,
            "--header" => headers.push(value.clone()),
            "--ca" => ca = Some(value.clone()),
            _ => return Err(format!("unknown option {flag}; usage: {USAGE}")),
        }
    }
    let url = url.ok_or_else(|| format!("--url is required; usage: {USAGE}"))?;
    let rate = rate.ok_or_else(|| format!("--rate is required; usage: {USAGE}"))?;
    let target = Target::new(&url, &headers, ca.as_deref())?;
    Ok(Args {
        target,
        rate,
        connections,
        duration: Duration::from_secs_f64(duration),
        warmup: Duration::from_secs_f64(warmup),
    })
}

/// What one connection saw: latencies (µs) of the requests due after the warm-up, and failures.
#[derive(Default)]
struct Seen {
    latencies: Vec<u64>,
    errors: u64,
    non_2xx: u64,
    /// Requests sent late because the connection was still busy when they were due.
    held_up: u64,
    /// When the last counted answer arrived.
    last: Option<Instant>,
    printed: bool,
}

/// The longest a connect or an exchange may take; longer is an error (a server that stops
/// answering must not stop the run).
const LIMIT: Duration = Duration::from_secs(5);

impl Seen {
    /// Prints a connection's first failure; counts those of requests due after the warm-up.
    fn report(&mut self, counted: bool, what: std::fmt::Arguments<'_>) {
        if self.errors == 0 && !self.printed {
            eprintln!("bcs-loadgen: {what}");
            self.printed = true;
        }
        self.errors += u64::from(counted);
    }
}

async fn connect(target: &Target) -> Result<Connection, String> {
    match tokio::time::timeout(LIMIT, target.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err(format!("connect: no connection within {LIMIT:?}")),
    }
}

async fn drive(args: std::rc::Rc<Args>, index: usize, start: Instant) -> Seen {
    let mut seen = Seen::default();
    let end = start + args.warmup + args.duration;
    // Connected before the clock starts, so the first due requests do not queue on handshakes.
    let mut connection = match connect(&args.target).await {
        Ok(c) => Some(c),
        Err(e) => {
            seen.report(false, format_args!("{e}"));
            None
        }
    };
    for k in 0u64.. {
        let due = start + Duration::from_secs_f64((k as f64 * args.connections as f64 + index as f64) / args.rate);
        if due >= end {
            break;
        }
        let counted = due >= start + args.warmup;
        let sent_from = if Instant::now() < due {
            tokio::time::sleep_until(due.into()).await;
            Instant::now()
        } else {
            seen.held_up += u64::from(counted);
            due
        };
        let conn = match connection.take() {
            Some(c) => c,
            None => match connect(&args.target).await {
                Ok(c) => c,
                Err(e) => {
                    seen.report(counted, format_args!("{e}"));
                    continue;
                }
            },
        };
        match tokio::time::timeout(LIMIT, conn.exchange()).await {
            Ok(Ok((conn, status))) => {
                if counted {
                    let now = Instant::now();
                    seen.latencies.push((now - sent_from).as_micros() as u64);
                    seen.last = Some(now);
                    seen.non_2xx += u64::from(!(200..300).contains(&status));
                }
                connection = conn;
            }
            Ok(Err(e)) => seen.report(counted, format_args!("request: {e}")),
            Err(_) => seen.report(counted, format_args!("request: no whole answer within {LIMIT:?}")),
        }
    }
    seen
}

/// Nearest rank, in milliseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    // The epsilon keeps 99.9 % of 1 000 at rank 999 despite binary fractions.
    let rank = (p / 100.0 * sorted.len() as f64 - 1e-9).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1] as f64 / 1000.0
}

fn main() {
    let args = parse_args().unwrap_or_else(|e| {
        eprintln!("bcs-loadgen: {e}");
        std::process::exit(2)
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    let local = tokio::task::LocalSet::new();
    // Room for every connection's handshake before the first request is due.
    let start = Instant::now() + Duration::from_millis(200);
    let (measured_from, measured_to) = (start + args.warmup, start + args.warmup + args.duration);
    let args = std::rc::Rc::new(args);
    let seen: Vec<Seen> = local.block_on(&runtime, async {
        // Marks on stderr when the measured seconds begin and end, so a caller can read the
        // server's CPU over exactly those.
        let marks = tokio::task::spawn_local(async move {
            tokio::time::sleep_until(measured_from.into()).await;
            eprintln!("bcs-loadgen: measuring");
            tokio::time::sleep_until(measured_to.into()).await;
            eprintln!("bcs-loadgen: measured");
        });
        let tasks: Vec<_> =
            (0..args.connections).map(|i| tokio::task::spawn_local(drive(args.clone(), i, start))).collect();
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.expect("a connection's task does not panic"));
        }
        // The last requests are due before the end: the end mark may still be to come.
        marks.await.expect("the marks' task does not panic");
        seen
    });
    let mut latencies: Vec<u64> = seen.iter().flat_map(|s| s.latencies.iter().copied()).collect();
    latencies.sort_unstable();
    let sum = |f: fn(&Seen) -> u64| seen.iter().map(f).sum::<u64>();
    let completed = latencies.len();
    // Over the time the answers took: longer than --duration when the server fell behind.
    let span = seen.iter().filter_map(|s| s.last).max().map_or(args.duration, |last| last - measured_from);
    let mean = if completed > 0 { latencies.iter().sum::<u64>() as f64 / completed as f64 / 1000.0 } else { 0.0 };
    println!(
        "{{\"rate\":{},\"connections\":{},\"duration_s\":{},\"completed\":{},\"achieved_rps\":{:.0},\
         \"errors\":{},\"non_2xx\":{},\"held_up\":{},\"mean_ms\":{:.3},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\
         \"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        args.rate,
        args.connections,
        args.duration.as_secs_f64(),
        completed,
        completed as f64 / span.as_secs_f64().max(args.duration.as_secs_f64()),
        sum(|s| s.errors),
        sum(|s| s.non_2xx),
        sum(|s| s.held_up),
        mean,
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        percentile(&latencies, 99.9),
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn percentiles_are_nearest_rank_in_milliseconds() {
        let sorted: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(super::percentile(&sorted, 50.0), 500.0);
        assert_eq!(super::percentile(&sorted, 99.0), 990.0);
        assert_eq!(super::percentile(&sorted, 99.9), 999.0);
        assert_eq!(super::percentile(&[7000], 99.0), 7.0);
        assert_eq!(super::percentile(&[], 99.0), 0.0);
    }
}
