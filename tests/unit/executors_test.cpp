// The job executors on this real host: scripts run with sh, bash and python3, apt simulations,
// parameter validation of every type, downloads from file:// sources. Nothing here changes the
// host's packages, services or power state.

#include "flotilla/agent/executors.hpp"

#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <fmt/format.h>

namespace fs = std::filesystem;
using flotilla::agent::ExecPolicy;
using flotilla::agent::execute_job;
using flotilla::agent::JobOutcome;
using flotilla::agent::JobRequest;
using flotilla::agent::JobStatus;

namespace {

using Clock = std::chrono::steady_clock;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "flotilla-exec-test.XXXXXX").string();
    const char* made = ::mkdtemp(tmpl.data());
    REQUIRE(made != nullptr);
    path_ = made;
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  [[nodiscard]] const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

ExecPolicy policy_in(const TempDir& tmp) {
  ExecPolicy p;
  p.work_dir = tmp.path() / "jobs";
  return p;
}

JobRequest script(std::string interpreter, std::string body, std::vector<std::string> args = {},
                  std::map<std::string, std::string> params = {}) {
  JobRequest r;
  r.job_id = "job-42";
  r.type = "script.run";
  r.script_name = "test.sh";
  r.script_interpreter = std::move(interpreter);
  r.script_body = std::move(body);
  r.args = std::move(args);
  r.params = std::move(params);
  return r;
}

JobRequest job(std::string type, std::map<std::string, std::string> params = {}) {
  JobRequest r;
  r.job_id = "job-7";
  r.type = std::move(type);
  r.params = std::move(params);
  return r;
}

JobOutcome run(const JobRequest& r, const ExecPolicy& p, std::stop_token stop = {}) {
  return execute_job(r, p, nullptr, std::move(stop));
}

std::string out(const JobOutcome& o, const std::string& key) {
  auto it = o.output.find(key);
  return it == o.output.end() ? std::string("<absent>") : it->second;
}

std::string describe(const JobOutcome& o) {
  std::string s = fmt::format("status {} message '{}'", static_cast<int>(o.status), o.message);
  for (const auto& [k, v] : o.output) s += fmt::format("\n  {}={}", k, v.substr(0, 300));
  return s;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_file(const fs::path& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
}

bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t len = c < 0x80 ? 1 : (c >> 5U) == 0x6 ? 2 : (c >> 4U) == 0xE ? 3 : (c >> 3U) == 0x1E ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    for (std::size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0U) != 0x80U) return false;
    }
    i += len;
  }
  return true;
}

// True once `pid` is gone or a zombie nobody reaped yet (as with no init in a container).
bool process_gone(pid_t pid) {
  const std::string stat = read_file(fmt::format("/proc/{}/stat", pid));
  if (stat.empty()) return true;
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

std::size_t open_fds() {
  std::error_code ec;
  return static_cast<std::size_t>(std::distance(fs::directory_iterator("/proc/self/fd", ec), fs::directory_iterator()));
}

// The host's apt state, read once: whether apt-get exists and package lists are present.
bool apt_lists_present() {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator("/var/lib/apt/lists", ec)) {
    if (entry.path().filename().string().find("_Packages") != std::string::npos) return true;
  }
  return false;
}

bool dpkg_installed(const std::string& name) {
  const std::string status = read_file("/var/lib/dpkg/status");
  const std::string key = "Package: " + name + "\n";
  const auto at = status.find(key);
  if (at == std::string::npos) return false;
  const auto end = status.find("\n\n", at);
  const auto st = status.find("Status: install ok installed", at);
  return st != std::string::npos && st < end;
}

}  // namespace

TEST_SUITE("executors") {

TEST_CASE("executors: script.run with sh captures exit code, stdout and stderr") {
  TempDir tmp;
  const auto policy = policy_in(tmp);
  std::vector<std::uint32_t> percents;
  const auto r = script("sh", "echo out\necho err >&2\nexit 3\n");
  const JobOutcome o = execute_job(r, policy, [&](std::uint32_t p, std::string_view) { percents.push_back(p); }, {});
  INFO(describe(o));
  CHECK(o.status == JobStatus::failed);
  CHECK(o.message == "exit code 3");
  CHECK(out(o, "exit_code") == "3");
  CHECK(out(o, "stdout") == "out\n");
  CHECK(out(o, "stderr") == "err\n");
  CHECK(out(o, "signal") == "<absent>");
  CHECK(out(o, "duration_ms") != "<absent>");
  REQUIRE(!percents.empty());
  CHECK(std::is_sorted(percents.begin(), percents.end()));
  CHECK(percents.back() == 100);

  const JobOutcome ok = run(script("sh", "printf done"), policy);
  CHECK(ok.status == JobStatus::succeeded);
  CHECK(ok.message == "exit code 0");
  CHECK(out(ok, "stdout") == "done");

  // A descriptor the agent opened without close-on-exec does not reach the job, and running
  // jobs leaves no descriptor behind in the agent.
  const int leak = ::dup2(STDERR_FILENO, 50);
  REQUIRE(leak == 50);
  const std::size_t fds_before = open_fds();
  const JobOutcome fds = run(script("sh", "[ -e /proc/$$/fd/50 ] && echo leaked || echo clean"), policy);
  CHECK(out(fds, "stdout") == "clean\n");
  CHECK(open_fds() == fds_before);
  ::close(leak);
  // The private script directory is gone afterwards.
  std::error_code ec;
  CHECK(fs::is_empty(policy.work_dir, ec));
}

TEST_CASE("executors: script.run with bash gets args verbatim and a minimal environment") {
  TempDir tmp;
  ::setenv("FLOTILLA_TEST_SECRET", "leaked", 1);
  const std::vector<std::string> args{"a b", "it's", "\"quoted\"", "$(id)", "", "*", "semi;colon"};
  const JobOutcome o = run(script("bash",
                                  "for a in \"$@\"; do printf '<%s>\\n' \"$a\"; done\n"
                                  "echo \"job=$FLOTILLA_JOB_ID lang=$LANG secret=${FLOTILLA_TEST_SECRET-unset}\"\n"
                                  "[ -n \"$PATH\" ] && [ -n \"$HOME\" ] && echo env-ok\n",
                                  args),
                           policy_in(tmp));
  ::unsetenv("FLOTILLA_TEST_SECRET");
  INFO(describe(o));
  CHECK(o.status == JobStatus::succeeded);
  CHECK(out(o, "stdout") ==
        "<a b>\n<it's>\n<\"quoted\">\n<$(id)>\n<>\n<*>\n<semi;colon>\njob=job-42 lang=C secret=unset\nenv-ok\n");
}

TEST_CASE("executors: script.run with python3") {
  TempDir tmp;
  const JobOutcome o = run(
      script("python3", "import sys\nprint('|'.join(sys.argv[1:]))\nsys.stderr.write('warn')\nsys.exit(2)\n",
             {"x y", "'q'"}),
      policy_in(tmp));
  INFO(describe(o));
  CHECK(o.status == JobStatus::failed);
  CHECK(o.message == "exit code 2");
  CHECK(out(o, "stdout") == "x y|'q'\n");
  CHECK(out(o, "stderr") == "warn");
}

TEST_CASE("executors: output beyond the bound is truncated and marked; invalid UTF-8 is replaced") {
  TempDir tmp;
  auto policy = policy_in(tmp);
  policy.max_output_bytes = 1000;
  const JobOutcome o = run(script("sh", "head -c 5000 /dev/zero | tr '\\0' x; head -c 1500 /dev/zero | tr '\\0' e >&2"),
                           policy);
  INFO(describe(o));
  CHECK(o.status == JobStatus::succeeded);
  CHECK(out(o, "stdout") == std::string(1000, 'x') + "\n[truncated: 4000 more bytes]");
  CHECK(out(o, "stdout_truncated") == "4000");
  CHECK(out(o, "stderr") == std::string(1000, 'e') + "\n[truncated: 500 more bytes]");
  CHECK(out(o, "stderr_truncated") == "500");

  const JobOutcome bin = run(script("sh", "printf '\\377\\376ok\\303'"), policy_in(tmp));
  CHECK(bin.status == JobStatus::succeeded);
  CHECK(valid_utf8(out(bin, "stdout")));
  CHECK(out(bin, "stdout") == "\xEF\xBF\xBD\xEF\xBF\xBDok\xEF\xBF\xBD");
}

TEST_CASE("executors: a timeout kills the whole process group quickly and is reported") {
  TempDir tmp;
  const auto start = Clock::now();
  const JobOutcome o = run(script("sh", "sleep 30 &\necho $!\nsleep 30\n", {}, {{"timeout", "1s"}}), policy_in(tmp));
  const auto elapsed = Clock::now() - start;
  INFO(describe(o));
  CHECK(o.status == JobStatus::failed);
  CHECK(o.message == "timed out after 1s");
  CHECK(out(o, "signal") == "SIGTERM");
  CHECK(elapsed < std::chrono::seconds(3));
  MESSAGE("timeout 1s: job ended after ", std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count(),
          " ms");
  // The background sleep was in the group and got the signal too.
  const pid_t background = std::atoi(out(o, "stdout").c_str());
  REQUIRE(background > 0);
  bool gone = false;
  for (int i = 0; i < 100 && !gone; ++i) {
    gone = process_gone(background);
    if (!gone) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(gone);
}

TEST_CASE("executors: stop requested cancels a running script") {
  TempDir tmp;
  std::stop_source source;
  std::jthread stopper([&source] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    source.request_stop();
  });
  const auto start = Clock::now();
  const JobOutcome o = run(script("bash", "sleep 30"), policy_in(tmp), source.get_token());
  const auto elapsed = Clock::now() - start;
  INFO(describe(o));
  CHECK(o.status == JobStatus::failed);
  CHECK(o.message == "canceled");
  CHECK(elapsed < std::chrono::seconds(2));

  // Already stopped: nothing starts.
  std::stop_source stopped;
  stopped.request_stop();
  const JobOutcome none = run(script("sh", "echo never"), policy_in(tmp), stopped.get_token());
  CHECK(none.status == JobStatus::failed);
  CHECK(none.message == "canceled");
  CHECK(out(none, "stdout").empty());
}

TEST_CASE("executors: script.run parameters are validated before anything runs") {
  TempDir tmp;
  const auto policy = policy_in(tmp);
  const auto rejected = [&](const JobRequest& r, std::string_view needle) {
    const JobOutcome o = run(r, policy);
    INFO(describe(o));
    CHECK(o.status == JobStatus::rejected);
    CHECK(o.message.find(needle) != std::string::npos);
  };
  rejected(script("perl", "print 1"), "interpreter");
  rejected(script("/bin/sh", "echo"), "interpreter");
  rejected(script("sh", ""), "empty");
  for (const char* bad : {"10x", "0s", "-5s", "abc", "25h", "s", "1.5s", " 1s"}) {
    CAPTURE(bad);
    rejected(script("sh", "echo", {}, {{"timeout", bad}}), "timeout");
  }
  rejected(script("sh", "echo", {}, {{"run_as", "flotilla-no-such-user"}}), "unknown user");
  rejected(script("sh", "echo", {}, {{"run_as", "root;id"}}), "run_as");
  rejected(script("sh", "echo", {}, {{"cwd", "relative/dir"}}), "cwd");
  rejected(script("sh", "echo", {}, {{"cwd", "/nonexistent-flotilla-dir"}}), "cwd");
  rejected(script("sh", "echo", {}, {{"shell", "true"}}), "unknown parameter 'shell'");
  rejected(script("sh", "echo", {std::string("a\0b", 3)}), "args[0]");
  rejected(job("frobnicate"), "unsupported job type 'frobnicate'");

  const JobOutcome cwd = run(script("sh", "pwd", {}, {{"cwd", "/tmp"}, {"timeout", "10m"}}), policy);
  CHECK(cwd.status == JobStatus::succeeded);
  CHECK(out(cwd, "stdout") == "/tmp\n");
}

TEST_CASE("executors: run_as switches user when the agent is root") {
  TempDir tmp;
  const JobOutcome o = run(script("sh", "id -un", {}, {{"run_as", "nobody"}}), policy_in(tmp));
  INFO(describe(o));
  if (::geteuid() == 0) {
    CHECK(o.status == JobStatus::succeeded);
    CHECK(out(o, "stdout") == "nobody\n");
  } else {
    CHECK(o.status == JobStatus::rejected);
    CHECK(o.message.find("root") != std::string::npos);
  }
}

TEST_CASE("executors: job types and parameter grammar") {
  const auto types = flotilla::agent::executor_job_types();
  for (const char* t : {"script.run", "package.install", "package.remove", "package.upgrade", "patch.scan",
                        "patch.apply", "service.restart", "service.status", "reboot", "file.download"}) {
    CAPTURE(t);
    CHECK(std::find(types.begin(), types.end(), t) != types.end());
  }
  using flotilla::agent::parse_job_duration;
  CHECK(parse_job_duration("30s")->count() == 30);
  CHECK(parse_job_duration("10m")->count() == 600);
  CHECK(parse_job_duration("1h")->count() == 3600);
  CHECK(parse_job_duration("24h")->count() == 86400);
  CHECK(!parse_job_duration("86401s"));
  CHECK(!parse_job_duration("30"));
  CHECK(!parse_job_duration("+3s"));

  using flotilla::agent::valid_package_name;
  for (const char* ok : {"sl", "g++", "libstdc++6", "python3.11", "0ad"}) {
    CAPTURE(ok);
    CHECK(valid_package_name(ok));
  }
  for (const char* bad : {"s", "Sl", "-sl", "sl-", "a b", "sl;reboot", "$(id)", "sl=1.0", "sl/bookworm", "sl*", ""}) {
    CAPTURE(bad);
    CHECK(!valid_package_name(bad));
  }

  using flotilla::agent::normalize_unit_name;
  CHECK(*normalize_unit_name("nginx") == "nginx.service");
  CHECK(*normalize_unit_name("cron.timer") == "cron.timer");
  CHECK(*normalize_unit_name("getty@tty1") == "getty@tty1.service");
  CHECK(*normalize_unit_name("foo.bar") == "foo.bar.service");
  CHECK(*normalize_unit_name("dev-disk-by\\x2duuid.device") == "dev-disk-by\\x2duuid.device");
  for (const char* bad : {"", "a;b", "../etc/passwd", "foo bar", "x$(id)", ".service", "--force"}) {
    CAPTURE(bad);
    if (std::string_view(bad) == "--force") {
      // Dashes are unit-name characters; systemctl gets "--" before the unit.
      CHECK(normalize_unit_name(bad).ok());
      continue;
    }
    CHECK(!normalize_unit_name(bad));
  }
}

TEST_CASE("executors: service jobs validate the unit and report a missing systemd as failed") {
  TempDir tmp;
  const auto policy = policy_in(tmp);
  for (const char* type : {"service.status", "service.restart"}) {
    CAPTURE(type);
    const JobOutcome bad = run(job(type, {{"unit", "cron;reboot"}}), policy);
    CHECK(bad.status == JobStatus::rejected);
    CHECK(bad.message.find("unit") != std::string::npos);
    CHECK(run(job(type), policy).status == JobStatus::rejected);
    CHECK(run(job(type, {{"unit", "cron"}, {"delay", "1"}}), policy).status == JobStatus::rejected);
  }
  // A unit that does not exist: "not found" on a systemd host, systemd's reason elsewhere.
  const JobOutcome o = run(job("service.status", {{"unit", "flotilla-no-such-unit"}}), policy);
  INFO(describe(o));
  CHECK(o.status == JobStatus::failed);
  CHECK(!o.message.empty());
  MESSAGE("service.status on this host: ", o.message);
}

TEST_CASE("executors: reboot is rejected without the policy and on bad parameters") {
  TempDir tmp;
  auto policy = policy_in(tmp);
  // A stop already requested: should validation ever let a request through, nothing can start.
  std::stop_source stopped;
  stopped.request_stop();
  const JobOutcome denied = run(job("reboot"), policy, stopped.get_token());
  CHECK(denied.status == JobStatus::rejected);
  CHECK(denied.message.find("not allowed") != std::string::npos);

  policy.allow_reboot = true;
  for (const char* bad : {"-5", "3601", "abc", "1.5", "", "60s"}) {
    CAPTURE(bad);
    const JobOutcome o = run(job("reboot", {{"delay", bad}}), policy, stopped.get_token());
    CHECK(o.status == JobStatus::rejected);
    CHECK(o.message.find("delay") != std::string::npos);
  }
  const JobOutcome unknown = run(job("reboot", {{"force", "true"}}), policy, stopped.get_token());
  CHECK(unknown.status == JobStatus::rejected);
}

TEST_CASE("executors: patch.apply refuses outside the maintenance window and checks its parameters") {
  TempDir tmp;
  auto policy = policy_in(tmp);
  int asked = 0;
  policy.in_maintenance_window = [&asked] {
    ++asked;
    return false;
  };
  const JobOutcome o = run(job("patch.apply", {{"security_only", "true"}, {"dry_run", "true"}}), policy);
  CHECK(o.status == JobStatus::rejected);
  CHECK(o.message == "outside the maintenance window");
  CHECK(asked == 1);
  CHECK(run(job("patch.apply", {{"reboot", "always"}}), policy).status == JobStatus::rejected);
  CHECK(run(job("patch.apply", {{"dry_run", "yes"}}), policy).status == JobStatus::rejected);
  CHECK(run(job("patch.scan", {{"refresh", "1"}}), policy).status == JobStatus::rejected);
}

TEST_CASE("executors: parse_apt_simulation reads versions and flags security updates") {
  const std::string sample =
      "NOTE: This is only a simulation!\n"
      "Reading package lists...\n"
      "Calculating upgrade...\n"
      "The following packages will be upgraded:\n"
      "  bash libgcrypt20 liblzma5\n"
      "Inst base-files [12.4+deb12u11] (12.4+deb12u15 Debian:12.15/oldstable [amd64])\n"
      "Conf base-files (12.4+deb12u15 Debian:12.15/oldstable [amd64])\n"
      "Inst libgcrypt20 [1.10.1-3] (1.10.1-3+deb12u1 Debian:12.15/oldstable, "
      "Debian-Security:12/oldstable-security [amd64]) []\n"
      "Inst liblzma5 [5.4.1-1] (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64])\n"
      "Inst linux-image-6.1.0-40-amd64 (6.1.153-1 Debian-Security:12/oldstable-security [amd64])\n"
      "Inst libssl3:i386 [3.0.15-1~deb12u1] (3.0.17-1~deb12u2 Ubuntu:22.04/jammy-security [i386])\n"
      "Remv oldpkg [1.0]\n"
      "Conf liblzma5 (5.4.1-1+deb12u2 Debian-Security:12/oldstable-security [amd64])\n"
      "Inst broken\n";
  const auto scan = flotilla::agent::parse_apt_simulation(sample);
  REQUIRE(scan.updates.size() == 5);
  CHECK(scan.updates[0].name == "base-files");
  CHECK(scan.updates[0].current == "12.4+deb12u11");
  CHECK(scan.updates[0].candidate == "12.4+deb12u15");
  CHECK(!scan.updates[0].security);
  CHECK(scan.updates[1].name == "libgcrypt20");
  CHECK(scan.updates[1].candidate == "1.10.1-3+deb12u1");
  CHECK(scan.updates[1].security);
  CHECK(scan.updates[2].security);
  CHECK(scan.updates[3].name == "linux-image-6.1.0-40-amd64");
  CHECK(scan.updates[3].current.empty());
  CHECK(scan.updates[3].candidate == "6.1.153-1");
  CHECK(scan.updates[4].name == "libssl3:i386");
  CHECK(scan.updates[4].security);
  CHECK(scan.scanned_ms == 0);
  CHECK(flotilla::agent::parse_apt_simulation("").updates.empty());
}

TEST_CASE("executors: parse_apt_changes reads simulations and real runs") {
  using flotilla::agent::parse_apt_changes;
  const auto sim = parse_apt_changes(
      "Inst sl (5.02-1+b1 Debian:12.15/oldstable [amd64])\n"
      "Inst jq [1.6-2.1+deb12u1] (1.6-2.1+deb12u3 Debian-Security:12/oldstable-security [amd64]) []\n"
      "Remv yq [3.1.0-3]\n"
      "Purg old-pkg [1.0-1]\n"
      "Conf sl (5.02-1+b1 Debian:12.15/oldstable [amd64])\n"
      "Conf jq (1.6-2.1+deb12u3 Debian-Security:12/oldstable-security [amd64])\n");
  REQUIRE(sim.size() == 4);
  CHECK(sim[0].action == "install");
  CHECK(sim[0].name == "sl");
  CHECK(sim[0].from.empty());
  CHECK(sim[0].to == "5.02-1+b1");
  CHECK(sim[1].action == "upgrade");
  CHECK(sim[1].from == "1.6-2.1+deb12u1");
  CHECK(sim[1].to == "1.6-2.1+deb12u3");
  CHECK(sim[2].action == "remove");
  CHECK(sim[2].from == "3.1.0-3");
  CHECK(sim[3].action == "purge");

  // What apt-get prints when it really installs: dpkg's progress lines.
  const auto real = parse_apt_changes(
      "Selecting previously unselected package sl.\n"
      "(Reading database ... 123456 files and directories currently installed.)\n"
      "Preparing to unpack .../sl_5.02-1+b1_amd64.deb ...\n"
      "Unpacking sl (5.02-1+b1) ...\n"
      "Preparing to unpack .../jq_1.6-2.1+deb12u3_amd64.deb ...\n"
      "Unpacking jq (1.6-2.1+deb12u3) over (1.6-2.1+deb12u1) ...\n"
      "Setting up sl (5.02-1+b1) ...\n"
      "Setting up jq (1.6-2.1+deb12u3) ...\n"
      "Setting up tzdata (2024a-0+deb12u1) ...\n"
      "Removing yq (3.1.0-3) ...\n"
      "Purging configuration files for yq (3.1.0-3) ...\n"
      "Processing triggers for man-db (2.11.2-2) ...\n");
  REQUIRE(real.size() == 4);
  CHECK(real[0].action == "install");
  CHECK(real[0].to == "5.02-1+b1");
  CHECK(real[1].action == "upgrade");
  CHECK(real[1].from == "1.6-2.1+deb12u1");
  CHECK(real[1].to == "1.6-2.1+deb12u3");
  CHECK(real[2].action == "configure");
  CHECK(real[2].name == "tzdata");
  CHECK(real[3].action == "purge");
  CHECK(real[3].name == "yq");
  CHECK(real[3].from == "3.1.0-3");
}

TEST_CASE("executors: package jobs reject malformed package lists") {
  TempDir tmp;
  const auto policy = policy_in(tmp);
  for (const char* bad : {"sl;reboot", "sl,$(id)", "sl, -y", "sl,,jq", "SL", "jq-"}) {
    CAPTURE(bad);
    const JobOutcome o = run(job("package.install", {{"packages", bad}, {"dry_run", "true"}}), policy);
    INFO(describe(o));
    CHECK(o.status == JobStatus::rejected);
    CHECK(o.message.find("packages") != std::string::npos);
  }
  CHECK(run(job("package.install", {{"dry_run", "true"}}), policy).status == JobStatus::rejected);
  CHECK(run(job("package.remove", {{"packages", "sl"}, {"dry_run", "maybe"}}), policy).status == JobStatus::rejected);
}

TEST_CASE("executors: apt simulation of a real package on this host") {
  TempDir tmp;
  if (!fs::exists("/usr/bin/apt-get")) {
    const JobOutcome o = run(job("package.install", {{"packages", "sl"}, {"dry_run", "true"}}), policy_in(tmp));
    CHECK(o.status == JobStatus::rejected);
    MESSAGE("no apt-get on this host: only the rejection is checked");
    return;
  }
  // Two apt runs at once (each spends about a second building apt's cache). The agent-level
  // switch makes even a real request a simulation; a package that does not exist keeps this
  // harmless even if the switch were ignored.
  JobOutcome missing;
  std::jthread failing([&] {
    auto policy = policy_in(tmp);
    policy.apt_simulate_only = true;
    missing = run(job("package.install", {{"packages", "flotilla-no-such-package"}}), policy);
  });
  const bool lists = apt_lists_present();
  const bool installed = dpkg_installed("sl");
  JobOutcome o;
  if (lists) {
    o = run(job(installed ? "package.remove" : "package.install", {{"packages", "sl"}, {"dry_run", "true"}}),
            policy_in(tmp));
  }
  failing.join();
  {
    INFO(describe(missing));
    CHECK(missing.status == JobStatus::failed);
    CHECK(missing.message.find("flotilla-no-such-package") != std::string::npos);
    CHECK(out(missing, "simulated") == "true");
    CHECK(out(missing, "exit_code") != "0");
  }
  if (!lists) {
    MESSAGE("/var/lib/apt/lists has no package lists: only the failure path is checked");
    return;
  }
  INFO(describe(o));
  CHECK(o.status == JobStatus::succeeded);
  CHECK(o.message.starts_with("simulated:"));
  CHECK(out(o, "simulated") == "true");
  CHECK(out(o, "exit_code") == "0");
  const std::string changes = out(o, "changes");
  CHECK(changes.find(installed ? "remove sl " : "install sl ") != std::string::npos);
  CHECK(out(o, installed ? "removed" : "installed") != "0");
  CHECK(std::stoul(out(o, "changed")) >= 1);
}

TEST_CASE("executors: file.download from a file:// source verifies SHA-256 and renames into place") {
  TempDir tmp;
  const auto policy = policy_in(tmp);
  const fs::path source = tmp.path() / "source file.bin";
  write_file(source, "abc");
  const std::string abc_sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
  const fs::path dest_dir = tmp.path() / "dest";
  fs::create_directory(dest_dir);
  const fs::path dest = dest_dir / "payload.bin";
  const std::string url = "file://" + (tmp.path() / "source%20file.bin").string();

  const JobOutcome ok = run(
      job("file.download", {{"url", url}, {"sha256", abc_sha}, {"path", dest.string()}, {"mode", "0640"}}), policy);
  INFO(describe(ok));
  REQUIRE(ok.status == JobStatus::succeeded);
  CHECK(read_file(dest) == "abc");
  struct stat st {};
  REQUIRE(::stat(dest.c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
  CHECK(out(ok, "sha256") == abc_sha);
  CHECK(out(ok, "size_bytes") == "3");
  CHECK(std::distance(fs::directory_iterator(dest_dir), fs::directory_iterator()) == 1);

  // Wrong digest: failed, the destination keeps its contents, no temporary file left behind.
  write_file(dest, "old");
  const JobOutcome bad = run(
      job("file.download", {{"url", url}, {"sha256", std::string(64, '0')}, {"path", dest.string()}}), policy);
  CHECK(bad.status == JobStatus::failed);
  CHECK(bad.message.find("sha256 mismatch") != std::string::npos);
  CHECK(read_file(dest) == "old");
  CHECK(std::distance(fs::directory_iterator(dest_dir), fs::directory_iterator()) == 1);

  const JobOutcome gone = run(
      job("file.download", {{"url", "file:///nonexistent-flotilla/x"}, {"sha256", abc_sha}, {"path", dest.string()}}),
      policy);
  CHECK(gone.status == JobStatus::failed);
  CHECK(read_file(dest) == "old");
}

TEST_CASE("executors: file.download parameters are validated") {
  TempDir tmp;
  const auto policy = policy_in(tmp);
  const std::string sha(64, 'a');
  const std::string dest = (tmp.path() / "x").string();
  const auto rejected = [&](std::map<std::string, std::string> params, std::string_view needle) {
    const JobOutcome o = run(job("file.download", std::move(params)), policy);
    INFO(describe(o));
    CHECK(o.status == JobStatus::rejected);
    CHECK(o.message.find(needle) != std::string::npos);
  };
  rejected({{"sha256", sha}, {"path", dest}}, "url");
  rejected({{"url", "ftp://host/x"}, {"sha256", sha}, {"path", dest}}, "url");
  rejected({{"url", "https://"}, {"sha256", sha}, {"path", dest}}, "url");
  rejected({{"url", "https://h/a b"}, {"sha256", sha}, {"path", dest}}, "url");
  rejected({{"url", "file://relative"}, {"sha256", sha}, {"path", dest}}, "url");
  rejected({{"url", "https://h/x"}, {"sha256", "abc"}, {"path", dest}}, "sha256");
  rejected({{"url", "https://h/x"}, {"sha256", std::string(64, 'g')}, {"path", dest}}, "sha256");
  rejected({{"url", "https://h/x"}, {"path", dest}}, "sha256");
  rejected({{"url", "https://h/x"}, {"sha256", sha}, {"path", "relative/x"}}, "path");
  rejected({{"url", "https://h/x"}, {"sha256", sha}, {"path", "/nonexistent-flotilla/x"}}, "path");
  rejected({{"url", "https://h/x"}, {"sha256", sha}, {"path", tmp.path().string()}}, "path");
  rejected({{"url", "https://h/x"}, {"sha256", sha}, {"path", dest + "/../y"}}, "path");
  for (const char* mode : {"8", "0999", "1777", "rw", "", "07777"}) {
    CAPTURE(mode);
    rejected({{"url", "https://h/x"}, {"sha256", sha}, {"path", dest}, {"mode", mode}}, "mode");
  }
}

}  // TEST_SUITE("executors")
