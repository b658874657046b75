// mini_rpc_server: a small TVM RPC server on libtvm_runtime alone (no Python on the device).
//
//   mini_rpc_server [HOST] [PORT] [KEY]      defaults: 127.0.0.1 9090 ""   (PORT 0: any free port)
//
// It speaks the handshake of TVM's Python server (python/tvm/rpc/server.py): the client sends
// int32 RPC_MAGIC, int32 length, "client:<key>[ options]"; we answer RPC_MAGIC (or
// RPC_MAGIC+2 on a key mismatch), int32 length, "server:<key>". The session itself is the
// runtime's own loop (global "rpc.ServerLoop"), run in a forked child inside a fresh work folder
// that the parent deletes afterwards. Unlike the Python server, clients are served concurrently
// (one process each), so a client that keeps its session open does not block the next one.
//
// What it lacks against the Python server: trackers and proxies, session timeouts, and linking
// uploaded .tar/.o files on the device (upload a cross-linked .so instead).
//
// SECURITY: a TVM RPC server runs whatever code a client uploads. Bind to 127.0.0.1 (the
// default), a trusted network, or reach it through an SSH tunnel.
#include <arpa/inet.h>
#include <elf.h>
#include <ftw.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>

#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>

namespace {

constexpr int32_t kRpcMagic = 0xFF271;               // tvm/rpc/base.py RPC_MAGIC
constexpr int32_t kRpcMismatch = kRpcMagic + 2;      // RPC_CODE_MISMATCH
constexpr int32_t kMaxKeyLength = 4096;
volatile sig_atomic_t g_stop = 0;

void Log(const std::string& message) {
  std::fprintf(stdout, "mini_rpc_server: %s\n", message.c_str());
  std::fflush(stdout);
}

void OnStopSignal(int) { g_stop = 1; }

// No SA_RESTART: poll() and waitpid() return EINTR so the loops notice g_stop at once.
void InstallStopHandlers() {
  struct sigaction action {};
  action.sa_handler = OnStopSignal;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaction(sig, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

bool ReadAll(int fd, void* data, size_t size) {
  auto* bytes = static_cast<char*>(data);
  while (size > 0) {
    ssize_t got = recv(fd, bytes, size, 0);
    if (got < 0 && errno == EINTR && !g_stop) continue;
    if (got <= 0) return false;
    bytes += got;
    size -= static_cast<size_t>(got);
  }
  return true;
}

bool WriteAll(int fd, const void* data, size_t size) {
  const auto* bytes = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t sent = send(fd, bytes, size, MSG_NOSIGNAL);
    if (sent < 0 && errno == EINTR) continue;
    if (sent <= 0) return false;
    bytes += sent;
    size -= static_cast<size_t>(sent);
  }
  return true;
}

// The handshake of python/tvm/rpc/server.py; true when the client may start a session.
bool Handshake(int fd, const std::string& key) {
  timeval limit{10, 0};  // a port probe that never speaks must not block the server
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
  int32_t magic = 0, length = 0;
  if (!ReadAll(fd, &magic, 4) || magic != kRpcMagic) return false;
  if (!ReadAll(fd, &length, 4) || length < 0 || length > kMaxKeyLength) return false;
  std::string client_key(static_cast<size_t>(length), '\0');
  if (!ReadAll(fd, client_key.data(), client_key.size())) return false;
  std::string first_word = client_key.substr(0, client_key.find(' '));
  if (first_word != "client:" + key) {
    WriteAll(fd, &kRpcMismatch, 4);
    Log("key mismatch: got '" + first_word + "'");
    return false;
  }
  std::string server_key = "server:" + key;
  int32_t server_length = static_cast<int32_t>(server_key.size());
  timeval forever{0, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &forever, sizeof(forever));
  return WriteAll(fd, &kRpcMagic, 4) && WriteAll(fd, &server_length, 4) &&
         WriteAll(fd, server_key.data(), server_key.size());
}

#if defined(__aarch64__)
constexpr uint16_t kThisMachine = EM_AARCH64;
#elif defined(__x86_64__)
constexpr uint16_t kThisMachine = EM_X86_64;
#elif defined(__arm__)
constexpr uint16_t kThisMachine = EM_ARM;
#endif

std::string MachineName(uint16_t machine) {
  switch (machine) {
    case EM_AARCH64: return "aarch64";
    case EM_X86_64: return "x86_64";
    case EM_386: return "x86";
    case EM_ARM: return "32-bit ARM";
    case EM_RISCV: return "RISC-V";
    default: return "machine " + std::to_string(machine);
  }
}

// dlopen of a library for another CPU only says "No such file or directory": say what it is.
void CheckLibraryMachine(const std::string& path, const std::string& name) {
  std::ifstream file(path, std::ios::binary);
  Elf64_Ehdr header{};  // e_machine sits at the same offset in 32- and 64-bit headers
  if (!file.read(reinterpret_cast<char*>(&header), sizeof(header)) ||
      std::memcmp(header.e_ident, ELFMAG, SELFMAG) != 0) {
    TVM_FFI_THROW(ValueError) << "'" << name << "' is not an ELF shared library; upload the .so that "
                              << "export_library wrote";
  }
  if (header.e_machine != kThisMachine) {
    TVM_FFI_THROW(ValueError) << "'" << name << "' is built for " << MachineName(header.e_machine)
                              << ", but this board is " << MachineName(kThisMachine)
                              << "; compile for the board's target and link with its cross compiler";
  }
}

// The functions the session calls by name: where uploads go, and how to load a module.
void RegisterSessionFunctions(const std::string& work_dir) {
  namespace ffi = tvm::ffi;
  auto in_work_dir = [work_dir](const std::string& name) {
    if (name.empty() || name[0] == '/' || name.find("..") != std::string::npos) {
      TVM_FFI_THROW(ValueError) << "file name '" << name << "' must be relative to the work folder";
    }
    return work_dir + "/" + name;
  };
  ffi::Function::SetGlobal(
      "tvm.rpc.server.workpath",
      ffi::Function::FromTyped([in_work_dir](ffi::String name) -> ffi::String {
        return in_work_dir(std::string(name));
      }),
      /*override=*/true);
  ffi::Function load_from_file = ffi::Function::GetGlobalRequired("ffi.ModuleLoadFromFile");
  ffi::Function::SetGlobal(
      "tvm.rpc.server.load_module",
      ffi::Function::FromTyped([in_work_dir, load_from_file](ffi::String name) -> ffi::Any {
        std::string path = in_work_dir(std::string(name));
        size_t dot = path.rfind('.');
        std::string suffix = dot == std::string::npos ? "" : path.substr(dot);
        if (suffix == ".tar" || suffix == ".o") {
          TVM_FFI_THROW(ValueError) << "mini_rpc_server cannot link '" << std::string(name)
                                    << "' on the device; upload a cross-linked .so instead";
        }
        CheckLibraryMachine(path, std::string(name));
        return load_from_file(ffi::String(path));
      }),
      /*override=*/true);
}

int RemoveEntry(const char* path, const struct stat*, int, struct FTW*) { return remove(path); }

// One client's session, in the forked child: handshake, then the runtime's RPC loop.
int RunSession(int conn_fd, const std::string& key, const std::string& work_dir) {
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) signal(sig, SIG_DFL);
  if (!Handshake(conn_fd, key)) return 0;  // a port probe or a wrong key: nothing to serve
  Log("client connected, work folder " + work_dir);
  try {
    if (chdir(work_dir.c_str()) != 0) throw std::runtime_error("cannot enter " + work_dir);
    RegisterSessionFunctions(work_dir);
    tvm::ffi::Function::GetGlobalRequired("rpc.ServerLoop")(conn_fd);
  } catch (const std::exception& error) {
    Log(std::string("session failed: ") + error.what());
    return 1;
  }
  return 0;
}

// Running sessions (child pid -> its work folder); the parent deletes a folder once its child ends.
using Sessions = std::map<pid_t, std::string>;

void StartSession(int listen_fd, int conn_fd, const std::string& key, Sessions* sessions) {
  const char* tmp = std::getenv("TMPDIR");
  std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/tvm-rpc-XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    Log("cannot make a work folder: " + std::string(std::strerror(errno)));
    close(conn_fd);
    return;
  }
  pid_t child = fork();
  if (child == 0) {
    close(listen_fd);
    _exit(RunSession(conn_fd, key, pattern));
  }
  close(conn_fd);
  if (child < 0) {
    Log("fork failed: " + std::string(std::strerror(errno)));
    nftw(pattern.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    return;
  }
  (*sessions)[child] = pattern;
}

void ReapSessions(Sessions* sessions, bool wait_all) {
  while (!sessions->empty()) {
    int status = 0;
    pid_t child = waitpid(-1, &status, wait_all ? 0 : WNOHANG);
    if (child < 0 && errno == EINTR) continue;
    if (child <= 0) break;
    auto found = sessions->find(child);
    if (found == sessions->end()) continue;
    if (WIFSIGNALED(status)) {  // e.g. SIGILL: the module uses an instruction this CPU lacks
      Log("session " + std::to_string(child) + " killed by signal " + std::to_string(WTERMSIG(status)) +
          " (" + strsignal(WTERMSIG(status)) + ")");
    }
    nftw(found->second.c_str(), RemoveEntry, 16, FTW_DEPTH | FTW_PHYS);
    sessions->erase(found);
  }
}

int Listen(const std::string& host, const std::string& port) {
  addrinfo hints{}, *found = nullptr;
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  if (int error = getaddrinfo(host.c_str(), port.c_str(), &hints, &found)) {
    Log("cannot resolve " + host + ": " + gai_strerror(error));
    return -1;
  }
  int fd = socket(found->ai_family, found->ai_socktype, found->ai_protocol);
  int on = 1;
  if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
  if (fd < 0 || bind(fd, found->ai_addr, found->ai_addrlen) != 0 || listen(fd, 8) != 0) {
    Log("cannot listen on " + host + ":" + port + ": " + std::strerror(errno));
    freeaddrinfo(found);
    return -1;
  }
  freeaddrinfo(found);
  return fd;
}

int BoundPort(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  if (address.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = argc > 1 ? argv[1] : "127.0.0.1";
  std::string port = argc > 2 ? argv[2] : "9090";
  std::string key = argc > 3 ? argv[3] : "";
  if (argc > 4 || (argc > 1 && (std::string(argv[1]) == "-h" || std::string(argv[1]) == "--help"))) {
    std::fprintf(stderr, "usage: %s [HOST] [PORT] [KEY]\n", argv[0]);
    return 2;
  }
  InstallStopHandlers();
  int listen_fd = Listen(host, port);
  if (listen_fd < 0) return 1;
  Log("listening on " + host + ":" + std::to_string(BoundPort(listen_fd)));
  Sessions sessions;
  while (!g_stop) {
    pollfd waiting{listen_fd, POLLIN, 0};
    int ready = poll(&waiting, 1, 500);  // wakes up now and then to clean up ended sessions
    ReapSessions(&sessions, /*wait_all=*/false);
    if (ready <= 0) continue;  // timeout, or EINTR from a stop signal
    int conn_fd = accept(listen_fd, nullptr, nullptr);
    if (conn_fd < 0) continue;
    int on = 1;
    setsockopt(conn_fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    StartSession(listen_fd, conn_fd, key, &sessions);
  }
  close(listen_fd);
  for (const auto& session : sessions) kill(session.first, SIGTERM);
  ReapSessions(&sessions, /*wait_all=*/true);
  Log("stopped");
  return 0;
}
