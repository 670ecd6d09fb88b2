//! Who may use the operator station: the users file (argon2 hashes), login sessions with
//! expiry and a CSRF token each, and login rate limiting.
//!
//! The users file is one user per line, `NAME:ROLE:PHC-HASH`, `#` starts a comment. It is
//! written by `alsentry user add|passwd` and read at start. Nothing here logs a password, a
//! hash or a token.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::core::model::Ts;

/// What a user may do. Ordered: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Sees everything, changes nothing.
    Viewer,
    /// Acknowledges, shelves, unshelves and resets alarms.
    Operator,
    /// Also takes alarms out of service and returns them.
    Engineer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Engineer => "engineer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "engineer" => Some(Role::Engineer),
            _ => None,
        }
    }

    /// The least role allowed to send command `op`.
    pub fn needed_for(op: &str) -> Role {
        match op {
            "out_of_service" | "return_to_service" => Role::Engineer,
            _ => Role::Operator,
        }
    }
}

/// One line of the users file.
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub role: Role,
    hash: String,
}

/// Never prints the hash.
impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// The users file, read once.
#[derive(Debug, Clone, Default)]
pub struct Users {
    users: Vec<User>,
}

/// Names are what the alarm payloads record as `by`: short, printable, no separator.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '.' | '-' | '_' | '@'))
}

impl Users {
    /// Parses the file's text; errors name the line.
    pub fn parse(path: &Path, text: &str) -> Result<Users, String> {
        let mut users: Vec<User> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let mut parts = line.splitn(3, ':');
            let (Some(name), Some(role), Some(hash)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("{}: expected NAME:ROLE:HASH", at()));
            };
            if !valid_name(name) {
                return Err(format!("{}: \"{name}\" is not a valid user name", at()));
            }
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "{}: unknown role \"{role}\"; accepted: viewer, operator, engineer",
                    at()
                )
            })?;
            if PasswordHash::new(hash).is_err() {
                return Err(format!("{}: the hash of {name} is not a PHC string", at()));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(format!("{}: user {name} appears twice", at()));
            }
            users.push(User {
                name: name.to_string(),
                role,
                hash: hash.to_string(),
            });
        }
        Ok(Users { users })
    }

    /// Reads `path`; a missing file is an error (the config names it, so it must exist).
    pub fn load(path: &Path) -> Result<Users, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading the users file {}: {e}", path.display()))?;
        Users::parse(path, &text)
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Adds or replaces `name`; `role` None keeps the current role (password change).
    pub fn set(&mut self, name: &str, role: Option<Role>, password: &str) -> Result<(), String> {
        let hash = hash_password(password)?;
        match self.users.iter_mut().find(|u| u.name == name) {
            Some(u) => {
                u.hash = hash;
                if let Some(r) = role {
                    u.role = r;
                }
            }
            None => self.users.push(User {
                name: name.to_string(),
                role: role.ok_or_else(|| format!("no user {name}; add it first"))?,
                hash,
            }),
        }
        Ok(())
    }

    pub fn to_text(&self) -> String {
        let mut out = String::from(
            "# alsentry operator station users: NAME:ROLE:ARGON2-HASH (alsentry user add|passwd)\n",
        );
        for u in &self.users {
            out.push_str(&format!("{}:{}:{}\n", u.name, u.role.as_str(), u.hash));
        }
        out
    }

    /// Checks a password; `None` for an unknown user or a wrong password alike. Slow by
    /// design (argon2): call it off the async threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<&User> {
        // An unknown name costs the same as a known one, so timing does not tell names.
        let dummy = dummy_hash();
        let (user, hash) = match self.get(name) {
            Some(u) => (Some(u), u.hash.as_str()),
            None => (None, dummy.as_str()),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        user.filter(|_| ok)
    }
}

fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
        .clone()
}

/// An argon2id hash (the crate's defaults: m=19 MiB, t=2, p=1) with a random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing failed: {e}"))
}

/// A random token, hex, 128 bits.
pub fn token() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares without stopping at the first difference.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A logged-in user.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    pub role: Role,
    pub csrf: String,
    pub expires: Ts,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user)
            .field("role", &self.role)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Live sessions by token. Sliding expiry: each use moves it `ttl_ms` ahead.
#[derive(Default)]
pub struct Sessions {
    by_token: HashMap<String, Session>,
    pub ttl_ms: i64,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sessions({} live)", self.by_token.len())
    }
}

/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1_000;

impl Sessions {
    pub fn new(ttl_ms: i64) -> Sessions {
        Sessions {
            by_token: HashMap::new(),
            ttl_ms,
        }
    }

    /// Opens a session; returns its token.
    pub fn open(&mut self, user: &User, now: Ts) -> (String, Session) {
        self.by_token.retain(|_, s| s.expires > now);
        if self.by_token.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .by_token
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
            {
                self.by_token.remove(&oldest);
            }
        }
        let t = token();
        let s = Session {
            user: user.name.clone(),
            role: user.role,
            csrf: token(),
            expires: now + self.ttl_ms,
        };
        self.by_token.insert(t.clone(), s.clone());
        (t, s)
    }

    /// The session of `token`, extended, unless it expired.
    pub fn touch(&mut self, token: &str, now: Ts) -> Option<Session> {
        let s = self.by_token.get_mut(token)?;
        if s.expires <= now {
            self.by_token.remove(token);
            return None;
        }
        s.expires = now + self.ttl_ms;
        Some(s.clone())
    }

    /// Whether `token` is a live session, without extending it (an open event stream does not
    /// keep a login alive).
    pub fn alive(&self, token: &str, now: Ts) -> bool {
        self.by_token.get(token).is_some_and(|s| s.expires > now)
    }

    pub fn close(&mut self, token: &str) {
        self.by_token.remove(token);
    }
}

/// Failed logins allowed per name within [`WINDOW_MS`] before logins for it are refused.
pub const MAX_FAILURES_PER_NAME: usize = 5;
/// Failed logins allowed per client address within [`WINDOW_MS`] (one client guessing names).
pub const MAX_FAILURES_PER_ADDRESS: usize = 10;
/// Failed logins allowed in total within [`WINDOW_MS`] (many clients guessing).
pub const MAX_FAILURES_TOTAL: usize = 20;
pub const WINDOW_MS: i64 = 60_000;

/// Counts failed logins (by name and by client address) and refuses further tries for a while.
#[derive(Debug, Default)]
pub struct LoginLimiter {
    /// (name, client address, when).
    failures: Vec<(String, String, Ts)>,
}

impl LoginLimiter {
    /// `Err(seconds to wait)` while logins for `name`, or from `addr`, are refused.
    pub fn check(&mut self, name: &str, addr: &str, now: Ts) -> Result<(), i64> {
        self.failures.retain(|(_, _, t)| now - t < WINDOW_MS);
        let first = |f: &dyn Fn(&(String, String, Ts)) -> bool, max: usize| {
            let hits: Vec<Ts> = self.failures.iter().filter(|x| f(x)).map(|x| x.2).collect();
            (hits.len() >= max).then(|| hits[0])
        };
        let blocking = first(&|x| x.0 == name, MAX_FAILURES_PER_NAME)
            .or_else(|| first(&|x| x.1 == addr, MAX_FAILURES_PER_ADDRESS))
            .or_else(|| first(&|_| true, MAX_FAILURES_TOTAL));
        match blocking {
            Some(first) => Err(((first + WINDOW_MS - now) / 1000).max(1)),
            None => Ok(()),
        }
    }

    pub fn failed(&mut self, name: &str, addr: &str, now: Ts) {
        // Bounded: names are attacker-chosen.
        if self.failures.len() < 10 * MAX_FAILURES_TOTAL {
            self.failures
                .push((name.to_string(), addr.to_string(), now));
        }
    }

    /// A good login clears that name's failures.
    pub fn succeeded(&mut self, name: &str) {
        self.failures.retain(|(n, _, _)| n != name);
    }
}

/// `alsentry user add NAME --role ROLE` and `alsentry user passwd NAME`: rewrites the users
/// file (created if missing, mode 0600) with the new hash. The password comes from
/// `password` (read by the CLI from stdin or a prompt).
pub fn set_user(
    file: &Path,
    name: &str,
    role: Option<Role>,
    password: &str,
) -> Result<String, String> {
    if !valid_name(name) {
        return Err(format!(
            "\"{name}\" is not a valid user name (letters, digits, . - _ @; at most 64)"
        ));
    }
    let mut users = match std::fs::read_to_string(file) {
        Ok(text) => Users::parse(file, &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && role.is_some() => Users::default(),
        Err(e) => return Err(format!("reading {}: {e}", file.display())),
    };
    let existed = users.get(name).is_some();
    if role.is_some() && existed {
        return Err(format!(
            "user {name} exists in {}; use `alsentry user passwd {name}`",
            file.display()
        ));
    }
    users.set(name, role, password)?;
    write_private(file, &users.to_text())?;
    let weak = if password.chars().count() < MIN_GOOD_PASSWORD {
        format!(" (warning: a password under {MIN_GOOD_PASSWORD} characters is easy to guess)")
    } else {
        String::new()
    };
    let done = if existed {
        format!("password of {name} changed in {}", file.display())
    } else {
        format!(
            "user {name} added as {} to {}",
            role.map_or("", Role::as_str),
            file.display()
        )
    };
    Ok(done + &weak)
}

/// Shorter passwords are accepted (the plant decides) with a warning.
pub const MIN_GOOD_PASSWORD: usize = 8;

/// Writes through a temporary file and a rename, readable by the owner only.
fn write_private(file: &Path, text: &str) -> Result<(), String> {
    use std::io::Write as _;
    let tmp: PathBuf = file.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    write().map_err(|e| format!("writing {}: {e}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_round_trip_and_verify() {
        let mut u = Users::default();
        u.set("li.wei", Some(Role::Operator), "correct horse")
            .unwrap();
        let text = u.to_text();
        assert!(!text.contains("correct horse"));
        let back = Users::parse(Path::new("users"), &text).unwrap();
        assert_eq!(
            back.verify("li.wei", "correct horse").map(|u| u.role),
            Some(Role::Operator)
        );
        assert!(back.verify("li.wei", "wrong horse!").is_none());
        assert!(back.verify("nobody", "correct horse").is_none());
        assert!(
            format!("{back:?}").find("argon2").is_none(),
            "no hash in Debug"
        );
        assert!(u.set("x", Some(Role::Viewer), "").is_err());
    }

    #[test]
    fn bad_users_files_name_the_line() {
        let p = Path::new("/etc/alsentry/users");
        let e = Users::parse(
            p,
            "# c\n\nbob:chief:$argon2id$v=19$m=1,t=1,p=1$c2FsdHNhbHQ$aGFzaA\n",
        )
        .unwrap_err();
        assert!(e.starts_with("/etc/alsentry/users:3: unknown role"), "{e}");
        let e = Users::parse(p, "bob\n").unwrap_err();
        assert_eq!(e, "/etc/alsentry/users:1: expected NAME:ROLE:HASH");
        let e = Users::parse(p, "bob:viewer:plain\n").unwrap_err();
        assert!(e.contains("not a PHC string"), "{e}");
    }

    #[test]
    fn sessions_expire_and_slide() {
        let mut s = Sessions::new(1_000);
        let user = User {
            name: "a".into(),
            role: Role::Viewer,
            hash: String::new(),
        };
        let (t, sess) = s.open(&user, 0);
        assert_ne!(t, sess.csrf);
        assert!(s.touch(&t, 900).is_some());
        assert!(s.touch(&t, 1_800).is_some(), "slid to 1900");
        assert!(
            s.alive(&t, 2_000) && !s.alive(&t, 2_800),
            "alive does not slide"
        );
        assert!(s.touch(&t, 2_900).is_none());
        assert!(s.touch(&t, 2_901).is_none(), "gone");
        let (t, _) = s.open(&user, 0);
        s.close(&t);
        assert!(s.touch(&t, 1).is_none());
    }

    #[test]
    fn logins_are_limited_per_name_per_address_and_in_total() {
        let mut l = LoginLimiter::default();
        for i in 0..MAX_FAILURES_PER_NAME as i64 {
            assert!(l.check("bob", "10.0.0.1", i).is_ok());
            l.failed("bob", "10.0.0.1", i);
        }
        assert_eq!(l.check("bob", "10.0.0.2", 10), Err(59));
        assert!(
            l.check("alice", "10.0.0.2", 10).is_ok(),
            "other names still log in"
        );
        assert!(
            l.check("bob", "10.0.0.2", WINDOW_MS).is_ok(),
            "the window passes"
        );
        // One client guessing many names.
        for i in 0..MAX_FAILURES_PER_ADDRESS {
            l.failed(&format!("n{i}"), "10.0.0.9", WINDOW_MS);
        }
        assert!(l.check("carol", "10.0.0.9", WINDOW_MS + 1).is_err());
        assert!(l.check("carol", "10.0.0.3", WINDOW_MS + 1).is_ok());
        // Many clients guessing.
        for i in 0..MAX_FAILURES_TOTAL {
            l.failed(&format!("m{i}"), &format!("10.1.0.{i}"), WINDOW_MS);
        }
        assert!(l.check("alice", "10.0.0.4", WINDOW_MS + 1).is_err());
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
