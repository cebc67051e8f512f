// The API key's check (see auth.h).
#include "server/auth.h"

#include <strings.h>

namespace tpx {

bool bearer_matches(const std::string& authorization, const std::string& key) {
    const size_t scheme = 6;  // "Bearer"
    if (authorization.size() <= scheme || strncasecmp(authorization.c_str(), "Bearer", scheme) != 0 || authorization[scheme] != ' ') return false;
    const size_t at = authorization.find_first_not_of(' ', scheme);
    return at != std::string::npos && authorization.compare(at, std::string::npos, key) == 0;
}

}  // namespace tpx
