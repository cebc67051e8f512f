// The API key's check (see auth.h).
#include "server/auth.h"

#include <strings.h>

namespace tpx {

bool bearer_matches(const std::string& authorization, const std::string& key) {
    const size_t scheme = 6;  // "Bearer"
    if (authorization.size() <= scheme || strncasecmp(authorization.c_str(), "Bearer", scheme) != 0 || authorization[scheme] != ' ') return false;
    const size_t at = authorization.find_first_not_of(' ', scheme);
    if (at == std::string::npos) return false;
    // Every byte of the key compared whatever the first difference: the answer's time tells
    // nothing of how much of the key a guess got right (only whether its length is the key's).
    const size_t n = authorization.size() - at;
    unsigned diff = n == key.size() ? 0 : 1;
    for (size_t i = 0; i < key.size(); ++i) {
        diff |= (unsigned char)(key[i] ^ (i < n ? authorization[at + i] : 0));
        asm volatile("" : "+r"(diff));  // no early exit once diff is known: the compiler sees it change
    }
    return diff == 0;
}

}  // namespace tpx
