//! Test networks made of Linux network namespaces, for tests that need real separate hosts:
//! partitions, NAT, links that fail.
//!
//! Two shapes:
//!
//! - A [`TestNet`] is one "switch" namespace holding a Linux bridge (`br0`) and N host namespaces.
//!   Host `i` has one interface, `eth0`, the end of a veth pair whose other end (`h<i>`) is a port
//!   of the bridge, the address `198.18.0.<10+i>/24` ([`TestNet::addr`]) and `lo` up.
//!   [`TestNet::partition`] splits the hosts into groups, each on its own bridge, so nothing
//!   passes between groups (TCP, UDP/QUIC, ARP: all of it, the way a cut cable does: no reset
//!   reaches either side); [`TestNet::heal`] puts every port back on `br0`. [`TestNet::cut`] and
//!   [`TestNet::restore`] take one host's link down and up.
//! - An [`Internet`] is a bridge in a switch namespace on a /24 the test chooses; the test plugs
//!   hosts into it at addresses it chooses ([`Internet::host`]) and home routers
//!   ([`Internet::nat_router`]): a [`NatRouter`] is a namespace with `wan` on the internet and
//!   `lan` towards one host of its own LAN (`<lan>.1` the router, `<lan>.2` the host, whose
//!   default route goes through the router), forwarding, MASQUERADE out of `wan`, nothing new
//!   forwarded in, and unsolicited packets to the router itself dropped or refused
//!   ([`Unsolicited`]), with the system's `iptables` or `iptables-legacy` ([`Iptables`]).
//!
//! Every address exists only inside these namespaces: the test's own namespace gets no
//! interface, address or route, so nothing a test runs inside can reach the machine's real
//! network, nor be reached from it. [`TestNet`] uses 198.18.0.0/24 (198.18.0.0/15 is set aside
//! for benchmarking networks, RFC 2544).
//!
//! - [`Netns::command`] runs a program inside a namespace (`ip netns exec NAME program`);
//!   [`Netns::run`] and [`in_netns`] run a closure on a thread that entered the namespace (its
//!   sockets live there: that is how a test reaches an API bound to a host's `127.0.0.1`);
//!   [`Netns::ip`] configures a namespace (`ip -n NAME ...`), [`Netns::exec`] runs a tool in it
//!   that must succeed (`iptables ...`).
//! - [`NsProc`] is a QUIVer node process in a namespace, listening on all its addresses with
//!   ephemeral ports; [`NsProc::status`] and [`NsProc::peers`] run `quiver status --json` and
//!   `quiver peers --json` inside the namespace, [`NsProc::metrics`] reads its `/metrics`;
//!   [`wait_for`] polls until a check gives a value and fails with the processes' logs.
//! - Names are unique per run (`qvt<pid>-<n>-...`); interface names are short and only need
//!   to be unique inside their own namespace (≤ 15 characters).
//! - Dropping a [`TestNet`], a [`Host`], a [`NatRouter`], an [`Internet`] (also while a panic
//!   unwinds) kills every process still inside its namespaces and deletes the namespaces, which
//!   deletes every link and bridge with them. Namespaces left by an earlier run that was killed
//!   outright (its pid gone) are deleted when the next one starts. Processes started through
//!   [`Netns::command`] also get `SIGKILL` when the thread that spawned them ends
//!   (`PR_SET_PDEATHSIG`): spawn them from the test's thread. Every command a builder runs is
//!   bounded in time.
//!
//! Making namespaces needs root, the `ip` command (iproute2) and a kernel with network
//! namespaces, veth and bridges (and netfilter NAT for routers). Without them (or without a tool
//! the test names, see [`preflight`]) [`TestNet::new`] and [`Internet::new`] return a [`Skip`]:
//! the test calls [`Skip::report`] (a loud `SKIP:` line that the test harness does not swallow)
//! and returns. With `QUIVER_REQUIRE_NETNS=1` in the environment (for CI, which runs as root) a
//! skip fails the test instead.

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{NodeProc, http_get, run_command_bounded, stdout_lines};

/// First three octets of every host address; host `i` is `.<10+i>`.
const SUBNET: [u8; 3] = [198, 18, 0];
const PREFIX_LEN: u8 = 24;
const FIRST_HOST: usize = 10;
/// Most hosts in one network (addresses .10 to .249).
pub const MAX_HOSTS: usize = 240;
/// Start of every namespace name this module makes.
const NAME_PREFIX: &str = "qvt";
/// Where `ip netns` keeps its named namespaces.
const NETNS_DIR: &str = "/var/run/netns";
/// Bound on every command that builds, inspects or removes a network.
const CMD_LIMIT: Duration = Duration::from_secs(20);
/// The `quiver` binary, for `quiver status` and `quiver peers` inside a namespace.
const QUIVER: &str = env!("CARGO_BIN_EXE_quiver");

/// Why a test network cannot be made here.
#[derive(Debug)]
pub struct Skip(pub String);

impl Skip {
    /// Says loudly on the terminal (past the harness's output capture) that `test` did not run
    /// and why. Panics instead when `QUIVER_REQUIRE_NETNS=1`.
    pub fn report(&self, test: &str) {
        let line = format!(
            "\n!!!!!!!! SKIP: {test} did not run: its test network cannot be made here: {}. It needs root, \
             iproute2 (`ip`), a kernel with netns, veth and bridge support, and the tools it names \
             (scripts/install-deps.sh installs them). !!!!!!!!\n",
            self.0
        );
        if std::env::var("QUIVER_REQUIRE_NETNS").is_ok_and(|v| v == "1") {
            panic!("{line}(QUIVER_REQUIRE_NETNS=1 makes this a failure)");
        }
        // `eprintln!` is captured by the test harness; the stderr handle itself is not.
        let _ = io::stderr().write_all(line.as_bytes());
        println!("{line}");
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A failed `ip` command: what was run and what it said.
#[derive(Debug)]
pub struct IpError(pub String);

impl fmt::Display for IpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IpError {}

/// Runs `ip args`; an error carries the command line and its stderr.
pub fn ip(args: &[&str]) -> Result<(), IpError> {
    let out = ip_output(args)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(IpError(format!("`ip {}` failed: {}", args.join(" "), out.stderr.trim())))
    }
}

/// What a finished tool printed.
struct ToolOutput {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

fn ip_output(args: &[&str]) -> Result<ToolOutput, IpError> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    output_bounded(cmd)
}

/// Runs `cmd` to its end, at most [`CMD_LIMIT`] (then kills it): an error, never a panic, so
/// cleanup can use it while a panic unwinds.
fn output_bounded(mut cmd: Command) -> Result<ToolOutput, IpError> {
    let what = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| IpError(format!("cannot run `{what}`: {e}")))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let deadline = Instant::now() + CMD_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(IpError(format!("`{what}` did not finish within {CMD_LIMIT:?} (killed)")));
            }
            Err(e) => return Err(IpError(format!("`{what}`: cannot wait for it: {e}"))),
        }
    };
    Ok(ToolOutput { status, stdout: out.join().unwrap_or_default(), stderr: err.join().unwrap_or_default() })
}

/// Checks that test networks can be made here, or says why not: Linux, root, a working `ip`,
/// and each of `tools` (programs a test runs inside its namespaces, e.g. `iptables`) on the
/// `PATH`.
pub fn preflight(tools: &[&str]) -> Result<(), Skip> {
    if !cfg!(target_os = "linux") {
        return Err(Skip("not Linux".into()));
    }
    #[cfg(target_os = "linux")]
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Skip("not running as root".into()));
    }
    match Command::new("ip").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(s) if s.success() => {}
        _ => return Err(Skip("no working `ip` command (install iproute2: scripts/install-deps.sh)".into())),
    }
    for tool in tools {
        if !on_path(tool) {
            return Err(Skip(format!("`{tool}` is not installed (scripts/install-deps.sh installs it)")));
        }
    }
    Ok(())
}

/// Whether `program` is an executable file in a directory of `$PATH`.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else { return false };
    std::env::split_paths(&path)
        .filter_map(|dir| std::fs::metadata(dir.join(program)).ok())
        .any(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A fresh name stem for this run's namespaces: `qvt<pid>-<n>`.
fn next_base() -> String {
    format!("{NAME_PREFIX}{}-{}", std::process::id(), NETS.fetch_add(1, Ordering::Relaxed))
}

/// Runs `f` on a new thread that has entered the named network namespace, and returns what it
/// returns. Sockets made inside `f` belong to that namespace. A panic in `f` is passed on.
pub fn in_netns<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let file = std::fs::File::open(Path::new(NETNS_DIR).join(name))?;
    std::thread::scope(|scope| {
        let thread = scope.spawn(move || {
            enter(&file)?;
            Ok(f())
        });
        thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Moves the calling thread into the network namespace `file` refers to.
#[cfg(target_os = "linux")]
fn enter(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setns on an open namespace file descriptor only changes this thread's network
    // namespace; the descriptor outlives the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn enter(_file: &std::fs::File) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "network namespaces are Linux only"))
}

/// A named network namespace (`ip netns add`), deleted when dropped, after killing every process
/// still inside it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Makes the namespace `name` with its `lo` up.
    pub fn create(name: &str) -> Result<Netns, IpError> {
        ip(&["netns", "add", name])?;
        let ns = Netns { name: name.to_owned() };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> args` (configures this namespace).
    pub fn ip(&self, args: &[&str]) -> Result<(), IpError> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command that runs `program` inside this namespace: `ip netns exec <name> program`
    /// (`ip` replaces itself with the program, so the child's pid is the program's). Add
    /// arguments and spawn it as usual. The child is killed when the spawning thread ends.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        kill_with_parent(&mut cmd);
        cmd
    }

    /// Runs `f` on a thread inside this namespace (see [`in_netns`]).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        in_netns(&self.name, f)
    }

    /// Runs `program args` inside this namespace, bounded in time; `Ok` with what it printed on
    /// stdout if it exits 0, else an error with the command line and its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, IpError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]).args(args);
        let out = output_bounded(cmd)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(IpError(format!(
                "`{program} {}` in {} failed ({}): {}{}",
                args.join(" "),
                self.name,
                out.status,
                out.stdout,
                out.stderr.trim()
            )))
        }
    }

    /// Sets the sysctl `net/...` (a path under `/proc/sys/net`) of this namespace to `value`.
    pub fn sysctl_net(&self, key: &str, value: &str) -> Result<(), IpError> {
        let path = Path::new("/proc/sys/net").join(key);
        // /proc/sys/net is the namespace of the thread that opens it.
        self.run(|| std::fs::write(&path, value))
            .and_then(|r| r)
            .map_err(|e| IpError(format!("cannot set {} in {}: {e}", path.display(), self.name)))
    }

    /// Pids of the processes inside this namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip_output(&["netns", "pids", &self.name])
            .map(|out| out.stdout.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only processes inside a namespace this test made: the ones it started there.
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
        delete(&self.name);
    }
}

fn delete(name: &str) {
    if let Err(e) = ip(&["netns", "delete", name]) {
        let _ = writeln!(io::stderr(), "netns cleanup: {e}");
    }
}

/// Has the child killed when the thread that spawned it ends (a test killed outright leaves no
/// processes behind).
#[cfg(target_os = "linux")]
fn kill_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn kill_with_parent(_cmd: &mut Command) {}

/// One host of a [`TestNet`], an [`Internet`] or a [`NatRouter`]'s LAN: its namespace and
/// address.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// The other end of its link: a port of the bridge in the switch namespace (`h<i>` in a
    /// [`TestNet`]), or its router's `lan`.
    pub port: String,
}

impl Host {
    /// A command running `program` on this host (see [`Netns::command`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        self.ns.command(program)
    }

    /// Runs `f` on a thread inside this host's namespace (see [`in_netns`]).
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        self.ns.run(f)
    }

    /// Starts a QUIVer node binary (`quiver-node`, `quiver-provider`, `quiver node`, ...) on this
    /// host, as [`NodeProc::start`] does on loopback: listening on the host's address (TCP and
    /// QUIC, `--port` as `args` say), the control API on the host's own `127.0.0.1` (reached
    /// through [`NodeProc::get`]), heartbeats every second, data in `<data_dir>/<name>`, no LAN
    /// discovery (`--no-mdns`: the test's topology alone decides who meets whom). The log level
    /// is `$RUST_LOG` or `info`.
    pub fn start_node(&self, bin: &str, name: &str, args: &[&str], data_dir: &Path) -> NodeProc {
        let mut cmd = self.command(bin);
        cmd.args(args)
            .args(["--listen-ip", &self.addr.to_string(), "--api", "127.0.0.1:0", "--heartbeat-interval", "1"])
            .arg("--no-mdns")
            .arg("--data-dir")
            .arg(data_dir.join(name))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        NodeProc::launch(cmd, name, data_dir, super::serves_gateway(args), Some(self.ns.name().to_owned()))
    }
}

/// Hosts on one bridge; see the module documentation.
#[derive(Debug)]
pub struct TestNet {
    /// Dropped first: processes die and host links go before the switch.
    hosts: Vec<Host>,
    switch: Netns,
    /// Bridges in the switch namespace; `br0` first, more made by [`TestNet::partition`].
    bridges: Mutex<Vec<String>>,
}

static NETS: AtomicU32 = AtomicU32::new(0);

impl TestNet {
    /// Makes a switch and `hosts` hosts on it, or says why it cannot.
    pub fn new(hosts: usize) -> Result<TestNet, Skip> {
        assert!(hosts <= MAX_HOSTS, "at most {MAX_HOSTS} hosts");
        preflight(&[])?;
        remove_stale();
        let base = next_base();
        let setup = || -> Result<TestNet, IpError> {
            let switch = Netns::create(&format!("{base}-s"))?;
            switch.ip(&["link", "add", "br0", "type", "bridge"])?;
            switch.ip(&["link", "set", "br0", "up"])?;
            let mut net = TestNet { hosts: Vec::new(), switch, bridges: Mutex::new(vec!["br0".into()]) };
            for i in 0..hosts {
                let ns = Netns::create(&format!("{base}-h{i}"))?;
                let port = format!("h{i}");
                let addr = Self::addr(i);
                // Both ends are made directly in their namespaces: nothing touches ours.
                net.switch.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
                net.switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
                ns.ip(&["addr", "add", &format!("{addr}/{PREFIX_LEN}"), "dev", "eth0"])?;
                ns.ip(&["link", "set", "eth0", "up"])?;
                net.hosts.push(Host { ns, addr, port });
            }
            Ok(net)
        };
        setup().map_err(|e| Skip(e.0))
    }

    /// The address of host `i`.
    pub fn addr(i: usize) -> Ipv4Addr {
        let [a, b, c] = SUBNET;
        Ipv4Addr::new(a, b, c, u8::try_from(FIRST_HOST + i).unwrap_or(u8::MAX))
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The namespace holding the bridges (to add routers, filters or more links).
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// Splits the network: the hosts of `groups[g]` are moved onto bridge `br<g>` (made on first
    /// use), so a group reaches only itself. Hosts in no group stay on `br0` with `groups[0]`.
    /// Established connections between groups are not reset: their packets just vanish.
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), IpError> {
        for (g, members) in groups.iter().enumerate() {
            let bridge = self.bridge(g)?;
            for &i in *members {
                self.switch.ip(&["link", "set", &self.hosts[i].port, "master", &bridge])?;
            }
        }
        Ok(())
    }

    /// Undoes [`TestNet::partition`]: every host back on `br0`.
    pub fn heal(&self) -> Result<(), IpError> {
        for h in &self.hosts {
            self.switch.ip(&["link", "set", &h.port, "master", "br0"])?;
        }
        Ok(())
    }

    /// Takes host `i`'s link down (at the bridge; the host sees no carrier).
    pub fn cut(&self, i: usize) -> Result<(), IpError> {
        self.switch.ip(&["link", "set", &self.hosts[i].port, "down"])
    }

    /// Brings host `i`'s link back up.
    pub fn restore(&self, i: usize) -> Result<(), IpError> {
        self.switch.ip(&["link", "set", &self.hosts[i].port, "up"])
    }

    /// The name of bridge `g`, made and brought up if it does not exist yet.
    fn bridge(&self, g: usize) -> Result<String, IpError> {
        let name = format!("br{g}");
        let mut bridges = self.bridges.lock().unwrap_or_else(|p| p.into_inner());
        if !bridges.contains(&name) {
            self.switch.ip(&["link", "add", &name, "type", "bridge"])?;
            self.switch.ip(&["link", "set", &name, "up"])?;
            bridges.push(name.clone());
        }
        Ok(name)
    }
}

/// Deletes namespaces made by test runs whose process is gone (killed before their cleanup ran).
fn remove_stale() {
    let Ok(out) = ip_output(&["netns", "list"]) else { return };
    for line in out.stdout.lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(NAME_PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Its processes died with it (PR_SET_PDEATHSIG); only the name is left.
            delete(name);
        }
    }
}

/// How a NAT router treats unsolicited packets from the internet to its own address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unsolicited {
    /// Its kernel answers (a TCP reset, ICMP port unreachable): a dial fails at once.
    Refuse,
    /// Dropped without an answer, as most home routers do: a dial hangs until it times out.
    Drop,
}

/// Which `iptables` writes a router's rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iptables {
    /// The system's `iptables` (on Debian 12 iptables-nft: its rules are nf_tables rules).
    System,
    /// `iptables-legacy` (x_tables): the only rules that programs editing the ruleset through
    /// libiptc (miniupnpd's iptables backend) can see.
    Legacy,
}

impl Iptables {
    /// The command.
    pub fn program(self) -> &'static str {
        match self {
            Iptables::System => "iptables",
            Iptables::Legacy => "iptables-legacy",
        }
    }
}

/// An "internet": a bridge (`br0`) in a switch namespace of its own, on the /24 `<subnet>.0`, and
/// the hosts and routers the test plugs into it; see the module documentation. Hosts and routers
/// belong to the test (each deletes its namespaces when dropped); the internet deletes the
/// switch.
#[derive(Debug)]
pub struct Internet {
    switch: Netns,
    subnet: [u8; 3],
    /// Stem of every namespace name of this internet.
    base: String,
    /// Bridge ports made so far (their names are `p<n>`).
    ports: AtomicU32,
}

impl Internet {
    /// Makes the switch and its bridge, or says why it cannot. `tools` are the programs the test
    /// runs inside its namespaces besides `ip` (see [`preflight`]).
    pub fn new(subnet: [u8; 3], tools: &[&str]) -> Result<Internet, Skip> {
        preflight(tools)?;
        remove_stale();
        let base = next_base();
        let make = || -> Result<Netns, IpError> {
            let switch = Netns::create(&format!("{base}-s"))?;
            switch.ip(&["link", "add", "br0", "type", "bridge"])?;
            switch.ip(&["link", "set", "br0", "up"])?;
            Ok(switch)
        };
        let switch = make().map_err(|e| Skip(e.0))?;
        Ok(Internet { switch, subnet, base, ports: AtomicU32::new(0) })
    }

    /// The address `<subnet>.<last>`.
    pub fn addr(&self, last: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, last)
    }

    /// The namespace holding the bridge.
    pub fn switch(&self) -> &Netns {
        &self.switch
    }

    /// A host on the internet: the namespace `<base>-<name>` with `eth0` at `<subnet>.<last>/24`.
    pub fn host(&self, name: &str, last: u8) -> Result<Host, IpError> {
        let (ns, port) = self.plug(name, "eth0", last)?;
        Ok(Host { ns, addr: self.addr(last), port })
    }

    /// A home router with `wan` at `<subnet>.<last>/24` and one host on its LAN `<lan>.0/24`;
    /// see [`NatRouter`].
    pub fn nat_router(
        &self,
        name: &str,
        last: u8,
        lan: [u8; 3],
        unsolicited: Unsolicited,
        iptables: Iptables,
    ) -> Result<NatRouter, IpError> {
        let (ns, host) = self.router(name, last, lan)?;
        let [a, b, c] = lan;
        let router = NatRouter { ns, wan: self.addr(last), gateway: Ipv4Addr::new(a, b, c, 1), host, iptables };
        router.iptables(&["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"])?;
        let forward_in = ["-A", "FORWARD", "-i", "wan", "-o", "lan"];
        router.iptables(
            &[&forward_in[..], &["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]].concat(),
        )?;
        router.iptables(&[&forward_in[..], &["-j", "DROP"]].concat())?;
        if unsolicited == Unsolicited::Drop {
            let input = ["-A", "INPUT", "-i", "wan"];
            router.iptables(&[&input[..], &["-m", "conntrack", "--ctstate", "NEW,INVALID", "-j", "DROP"]].concat())?;
        }
        Ok(router)
    }

    /// A plain router with `wan` at `<subnet>.<last>/24` and one host on its LAN `<lan>.0/24`
    /// (`<lan>.1` the router, `<lan>.2` the host, whose default route goes through the router):
    /// forwarding on, no NAT, no filter, and no multicast routing (nothing forwards multicast
    /// between the segments, as on a real routed network). Returns the router's namespace and
    /// the host; hosts on the internet reach the LAN through a route via `<subnet>.<last>`.
    pub fn router(&self, name: &str, last: u8, lan: [u8; 3]) -> Result<(Netns, Host), IpError> {
        let (ns, _) = self.plug(name, "wan", last)?;
        let host_ns = Netns::create(&format!("{}-{name}-lan", self.base))?;
        let [a, b, c] = lan;
        let (gateway, host_addr) = (Ipv4Addr::new(a, b, c, 1), Ipv4Addr::new(a, b, c, 2));
        ns.ip(&["link", "add", "lan", "type", "veth", "peer", "name", "eth0", "netns", host_ns.name()])?;
        ns.ip(&["addr", "add", &format!("{gateway}/{PREFIX_LEN}"), "dev", "lan"])?;
        ns.ip(&["link", "set", "lan", "up"])?;
        host_ns.ip(&["addr", "add", &format!("{host_addr}/{PREFIX_LEN}"), "dev", "eth0"])?;
        host_ns.ip(&["link", "set", "eth0", "up"])?;
        host_ns.ip(&["route", "add", "default", "via", &gateway.to_string()])?;
        ns.sysctl_net("ipv4/ip_forward", "1")?;
        Ok((ns, Host { ns: host_ns, addr: host_addr, port: "lan".into() }))
    }

    /// Makes the namespace `<base>-<name>` and links it to the bridge: its end, `ifname`, gets
    /// `<subnet>.<last>/24`. Returns the namespace and the bridge port.
    fn plug(&self, name: &str, ifname: &str, last: u8) -> Result<(Netns, String), IpError> {
        let ns = Netns::create(&format!("{}-{name}", self.base))?;
        let port = format!("p{}", self.ports.fetch_add(1, Ordering::Relaxed));
        // Both ends are made directly in their namespaces: nothing touches ours.
        self.switch.ip(&["link", "add", &port, "type", "veth", "peer", "name", ifname, "netns", ns.name()])?;
        self.switch.ip(&["link", "set", &port, "master", "br0", "up"])?;
        ns.ip(&["addr", "add", &format!("{}/{PREFIX_LEN}", self.addr(last)), "dev", ifname])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        Ok((ns, port))
    }
}

/// A home router made by [`Internet::nat_router`]: its namespace (`wan` on the internet, `lan`
/// towards its LAN), forwarding on, MASQUERADE out of `wan`, from the internet only replies
/// (`ESTABLISHED,RELATED`) forwarded to the LAN and everything else dropped, and unsolicited
/// packets to the router itself dropped or refused ([`Unsolicited`]); and the one host on its
/// LAN, whose default route is the router. Dropped, it deletes both namespaces.
#[derive(Debug)]
pub struct NatRouter {
    pub ns: Netns,
    /// Its address on the internet.
    pub wan: Ipv4Addr,
    /// Its address on the LAN (`<lan>.1`).
    pub gateway: Ipv4Addr,
    /// The host behind it (`<lan>.2`).
    pub host: Host,
    iptables: Iptables,
}

impl NatRouter {
    /// Runs the router's `iptables -w args` inside its namespace.
    pub fn iptables(&self, args: &[&str]) -> Result<String, IpError> {
        self.ns.exec(self.iptables.program(), &[&["-w"], args].concat())
    }
}

/// A QUIVer node binary running inside a namespace, listening on all of the namespace's
/// addresses with ephemeral ports, its control API on the namespace's own `127.0.0.1`; killed
/// when dropped.
pub struct NsProc {
    pub child: Child,
    /// Namespace name.
    pub ns: String,
    pub name: String,
    pub peer_id: String,
    /// The control API, `127.0.0.1:<port>` inside the namespace.
    pub api: String,
    /// The OpenAI-compatible gateway inside the namespace, if started with `--gateway`.
    pub gateway: Option<SocketAddr>,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl NsProc {
    /// Starts `bin args` inside `ns` (`--listen-ip 0.0.0.0 --port 0 --api 127.0.0.1:0
    /// --heartbeat-interval 1 --no-mdns`, data in `<dir>/<name>`, log in `<dir>/<name>.log` with
    /// the `RUST_LOG` filter `log`) and waits (60 s at most) until it has printed its PeerId and
    /// API address. No LAN discovery: the test's topology and bootstrap peers alone decide who
    /// meets whom.
    pub fn start(ns: &Netns, bin: &str, name: &str, args: &[&str], log: &str, dir: &Path) -> NsProc {
        Self::spawn(ns, bin, name, &[args, &["--no-mdns"]].concat(), log, dir)
    }

    /// [`NsProc::start`] with LAN discovery (mDNS) left as the command's default: on.
    pub fn start_lan(ns: &Netns, bin: &str, name: &str, args: &[&str], log: &str, dir: &Path) -> NsProc {
        Self::spawn(ns, bin, name, args, log, dir)
    }

    fn spawn(ns: &Netns, bin: &str, name: &str, args: &[&str], log: &str, dir: &Path) -> NsProc {
        let log_path = dir.join(format!("{name}.log"));
        let mut child = ns
            .command(bin)
            .args(args)
            .args(["--listen-ip", "0.0.0.0", "--port", "0", "--api", "127.0.0.1:0", "--heartbeat-interval", "1"])
            .arg("--data-dir")
            .arg(dir.join(name))
            .env("RUST_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log_path).expect("log file")))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin} in {}: {e}", ns.name()));
        let rx = stdout_lines(&mut child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let (mut peer_id, mut api, mut gateway) = (None, None, None);
        let wants_gateway = super::serves_gateway(args);
        while peer_id.is_none() || api.is_none() || (wants_gateway && gateway.is_none()) {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{name} did not start within 60 s; log:\n{}", tail(&log_path));
            };
            if let Some(rest) = line.strip_prefix("QUIVer node ") {
                peer_id = rest.split_whitespace().next().map(str::to_owned);
            } else if let Some(a) = line.strip_prefix("api on http://") {
                api = Some(a.to_owned());
            } else if let Some(a) = super::gateway_line(&line) {
                gateway = Some(a);
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        NsProc {
            child,
            ns: ns.name().to_owned(),
            name: name.to_owned(),
            peer_id: peer_id.unwrap_or_default(),
            api: api.unwrap_or_default(),
            gateway,
            log: log_path,
        }
    }

    /// Runs `quiver <what> --api <api> --json` inside the node's namespace (its API is on that
    /// loopback) and parses what it prints.
    fn quiver_json(&self, what: &str) -> Option<Value> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns, QUIVER, what, "--api", &self.api, "--json"]);
        let r = run_command_bounded(cmd, CMD_LIMIT);
        if !r.status.success() {
            return None;
        }
        serde_json::from_str(&r.stdout).ok()
    }

    /// `quiver status --json`.
    pub fn status(&self) -> Option<Value> {
        self.quiver_json("status")
    }

    /// `quiver peers --json`.
    pub fn peers(&self) -> Option<Value> {
        self.quiver_json("peers")
    }

    /// Its `/metrics` text, empty if it cannot be read.
    pub fn metrics(&self) -> String {
        let Ok(api) = self.api.parse::<SocketAddr>() else { return String::new() };
        match in_netns(&self.ns, || http_get(api, "/metrics")) {
            Ok(Some((200, body))) => body,
            _ => String::new(),
        }
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last 30 lines of a log file.
pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Polls `check` every 500 ms until it gives a value; panics with `what` and the ends of the
/// logs of `logs` (processes) and `files` (other log files) after `limit`.
pub fn wait_for<T>(
    limit: Duration,
    what: &str,
    logs: &[&NsProc],
    files: &[&Path],
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = check() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let logs: String = logs
        .iter()
        .map(|p| p.log.as_path())
        .chain(files.iter().copied())
        .map(|l| format!("\n--- {} ---\n{}", l.display(), tail(l)))
        .collect();
    panic!("{what}: not within {limit:?}{logs}");
}

/// The arguments of the `quiver ask` the namespace tests send through `bootstrap`: listening on
/// every interface of its namespace, JSON out, waiting up to 60 s for a provider, at most
/// `max_tokens` tokens.
pub fn ask_args<'a>(bootstrap: &'a str, max_tokens: &'a str) -> [&'a str; 11] {
    [
        "ask",
        "--bootstrap",
        bootstrap,
        "--listen-ip",
        "0.0.0.0",
        "--json",
        "--wait",
        "60",
        "--max-tokens",
        max_tokens,
        "Name three colours.",
    ]
}
