// Finds HTTP connections' sockets among this process's descriptors (see connection.h).
#include "server/connection.h"

#include <arpa/inet.h>
#include <cstdlib>
#include <dirent.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

namespace tpx {
namespace {

// The address (numeric, as cpp-httplib writes remote_addr) and port of a socket address.
bool address_of(const sockaddr_storage& a, std::string& host, int& port) {
    char text[INET6_ADDRSTRLEN] = {};
    if (a.ss_family == AF_INET) {
        const auto& in = reinterpret_cast<const sockaddr_in&>(a);
        port = ntohs(in.sin_port);
        return inet_ntop(AF_INET, &in.sin_addr, text, sizeof text) && (host = text, true);
    }
    if (a.ss_family == AF_INET6) {
        const auto& in6 = reinterpret_cast<const sockaddr_in6&>(a);
        port = ntohs(in6.sin6_port);
        return inet_ntop(AF_INET6, &in6.sin6_addr, text, sizeof text) && (host = text, true);
    }
    return false;
}

// Calls `take(fd, peer address, peer port, local port)` for each connected TCP socket of this
// process until it returns true.
template <typename Take>
void for_each_connection(Take take) {
    DIR* dir = opendir("/proc/self/fd");
    if (!dir) return;
    while (dirent* e = readdir(dir)) {
        char* end = nullptr;
        const long fd = std::strtol(e->d_name, &end, 10);
        if (end == e->d_name || *end != '\0' || fd == dirfd(dir)) continue;
        sockaddr_storage local{}, peer{};
        socklen_t local_len = sizeof local, peer_len = sizeof peer;
        if (getsockname((int)fd, reinterpret_cast<sockaddr*>(&local), &local_len) != 0) continue;  // not a socket
        if (getpeername((int)fd, reinterpret_cast<sockaddr*>(&peer), &peer_len) != 0) continue;   // a listener
        int type = 0;
        socklen_t type_len = sizeof type;
        if (getsockopt((int)fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_STREAM) continue;
        std::string local_host, peer_host;
        int lport = -1, pport = -1;
        if (!address_of(local, local_host, lport) || !address_of(peer, peer_host, pport)) continue;
        if (take((int)fd, peer_host, pport, lport)) break;
    }
    closedir(dir);
}

}  // namespace

std::string address_key(const std::string& addr) { return addr.substr(0, addr.find('%')); }

bool socket_address(int fd, bool peer, std::string& host, int& port) {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if ((peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&a), &len) : getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len)) != 0)
        return false;
    return address_of(a, host, port);
}

void shut_connections(int local_port, const std::function<bool(const std::string& addr, int port)>& shut) {
    for_each_connection([&](int fd, const std::string& host, int port, int lport) {
        if (lport == local_port && shut(host, port)) ::shutdown(fd, SHUT_RDWR);
        return false;
    });
}

bool peer_hung_up(int fd) {
    pollfd p{fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

}  // namespace tpx
