//! Test networks made of Linux network namespaces, for tests that need real separate hosts:
//! partitions, NAT, links that fail.
//!
//! A [`TestNet`] is one "switch" namespace holding a Linux bridge (`br0`) and N host namespaces.
//! Host `i` has one interface, `eth0`, the end of a veth pair whose other end (`h<i>`) is a port
//! of the bridge, the address `198.18.0.<10+i>/24` ([`TestNet::addr`]) and `lo` up. 198.18.0.0/15
//! is the range set aside for benchmarking networks (RFC 2544); here it exists only inside these
//! namespaces: the test's own namespace gets no interface, address or route, so nothing a test
//! runs inside can reach the machine's real network, nor be reached from it.
//!
//! - [`Netns::command`] runs a program inside a namespace (`ip netns exec NAME program`);
//!   [`Netns::run`] and [`in_netns`] run a closure on a thread that entered the namespace (its
//!   sockets live there: that is how a test reaches an API bound to a host's `127.0.0.1`);
//!   [`Netns::ip`] configures a namespace (`ip -n NAME ...`).
//! - [`TestNet::partition`] splits the hosts into groups, each on its own bridge, so nothing
//!   passes between groups (TCP, UDP/QUIC, ARP: all of it, the way a cut cable does: no reset
//!   reaches either side); [`TestNet::heal`] puts every port back on `br0`. [`TestNet::cut`] and
//!   [`TestNet::restore`] take one host's link down and up.
//! - Names are unique per run (`qvt<pid>-<n>-s`, `-h<i>`); interface names are short and only need
//!   to be unique inside their own namespace (≤ 15 characters).
//! - Dropping the [`TestNet`] (also while a panic unwinds) kills every process still inside its
//!   namespaces and deletes the namespaces, which deletes every link and bridge with them.
//!   Namespaces left by an earlier run that was killed outright (its pid gone) are deleted when
//!   the next one starts. Processes started through [`Netns::command`] also get `SIGKILL` when
//!   the thread that spawned them ends (`PR_SET_PDEATHSIG`): spawn them from the test's thread.
//!
//! Making namespaces needs root, the `ip` command (iproute2) and a kernel with network
//! namespaces, veth and bridges. Without them [`TestNet::new`] returns a [`Skip`]: the test calls
//! [`Skip::report`] (a loud `SKIP:` line that the test harness does not swallow) and returns.
//! With `QUIVER_REQUIRE_NETNS=1` in the environment (for CI, which runs as root) a skip fails the
//! test instead.

use std::ffi::OsStr;
use std::fmt;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use super::NodeProc;

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

/// Why a test network cannot be made here.
#[derive(Debug)]
pub struct Skip(pub String);

impl Skip {
    /// Says loudly on the terminal (past the harness's output capture) that `test` did not run
    /// and why. Panics instead when `QUIVER_REQUIRE_NETNS=1`.
    pub fn report(&self, test: &str) {
        let line = format!(
            "\n!!!!!!!! SKIP: {test} did not run: network namespaces cannot be made here: {}. It needs root, \
             iproute2 (`ip`) and a kernel with netns, veth and bridge support. !!!!!!!!\n",
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
        Err(IpError(format!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

fn ip_output(args: &[&str]) -> Result<Output, IpError> {
    Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| IpError(format!("cannot run `ip {}`: {e}", args.join(" "))))
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

    /// Pids of the processes inside this namespace.
    pub fn pids(&self) -> Vec<u32> {
        ip_output(&["netns", "pids", &self.name])
            .map(|out| String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect())
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

/// One host of a [`TestNet`]: its namespace and address.
#[derive(Debug)]
pub struct Host {
    pub ns: Netns,
    pub addr: Ipv4Addr,
    /// Its veth end on the bridge, in the switch namespace (`h<i>`).
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
    /// through [`NodeProc::get`]), heartbeats every second, data in `<data_dir>/<name>`. The log
    /// level is `$RUST_LOG` or `info`.
    pub fn start_node(&self, bin: &str, name: &str, args: &[&str], data_dir: &Path) -> NodeProc {
        let mut cmd = self.command(bin);
        cmd.args(args)
            .args(["--listen-ip", &self.addr.to_string(), "--api", "127.0.0.1:0", "--heartbeat-interval", "1"])
            .arg("--data-dir")
            .arg(data_dir.join(name))
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let wants_gateway = args.iter().any(|a| *a == "gateway" || *a == "--gateway");
        NodeProc::launch(cmd, name, data_dir, wants_gateway, Some(self.ns.name().to_owned()))
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
        remove_stale();
        let base = format!("{NAME_PREFIX}{}-{}", std::process::id(), NETS.fetch_add(1, Ordering::Relaxed));
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
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(pid) = name.strip_prefix(NAME_PREFIX).and_then(|rest| rest.split('-').next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            // Its processes died with it (PR_SET_PDEATHSIG); only the name is left.
            delete(name);
        }
    }
}
