// Stop strings (text/stop_strings.h) over tiny-text's tokenizer: StopStrings::reached decodes only
// an output's tail each step, and must say "reached" at the same step as a search of the whole
// decoded text would, the special tokens skipped or kept. Random outputs with the two special ids
// (0: <|begin_of_text|>, 1: <|end_of_text|>) mixed in; the stops are pieces of each output's own
// whole text (so they do occur), many of them across a special token's text where it is kept.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "process.h"
#include "text/stop_strings.h"
#include "tokenizer/tokenizer.h"

namespace {

const std::string kTokenizer = std::string(TPX_SOURCE_DIR) + "/models/tiny-text/tokenizer.json";

// The first step (output length) at which the whole decoded text, without an unfinished last
// character, holds a stop, or 0 for none.
size_t first_by_whole_text(const tpx::Tokenizer& tok, const tpx::StopStrings& stops, const std::vector<int32_t>& out, bool skip) {
    for (size_t n = 1; n <= out.size(); ++n) {
        std::string text = tok.decode(std::vector<int32_t>(out.begin(), out.begin() + (ptrdiff_t)n), skip);
        while (text.size() >= 3 && text.compare(text.size() - 3, 3, "\xEF\xBF\xBD") == 0) text.resize(text.size() - 3);
        if (stops.find_in(text) != std::string::npos) return n;
    }
    return 0;
}

size_t first_by_tail(const tpx::Tokenizer& tok, const tpx::StopStrings& stops, const std::vector<int32_t>& out, bool skip) {
    for (size_t n = 1; n <= out.size(); ++n)
        if (stops.reached(tok, std::vector<int32_t>(out.begin(), out.begin() + (ptrdiff_t)n), skip)) return n;
    return 0;
}

}  // namespace

TEST(StopStrings, TheTailSaysReachedAtTheStepTheWholeTextDoes) {
    const tpx::Tokenizer tok = tpx::Tokenizer::load(kTokenizer);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int> id(2, 2999), pick(0, 5), length(1, 12);
    int found[2] = {0, 0};
    for (int trial = 0; trial < 300; ++trial) {
        std::vector<int32_t> out;
        for (int i = 0; i < 24; ++i) out.push_back(pick(rng) == 0 ? (int32_t)(i % 2) : (int32_t)id(rng));
        for (bool skip : {true, false}) {
            const std::string whole = tok.decode(out, skip);
            if (whole.size() < 2) continue;
            const size_t n = std::min<size_t>((size_t)length(rng), whole.size() - 1);
            const size_t from = std::uniform_int_distribution<size_t>(0, whole.size() - n)(rng);
            const tpx::StopStrings stops({"zzz-never", whole.substr(from, n)});
            const size_t want = first_by_whole_text(tok, stops, out, skip);
            EXPECT_EQ(first_by_tail(tok, stops, out, skip), want) << "skip " << skip << ", stop '" << whole.substr(from, n) << "', trial " << trial;
            found[skip] += want > 0;
        }
    }
    // Every stop is a piece of the whole text, so nearly every trial finds one (a piece cut inside
    // a character that the prefixes decode otherwise may not).
    EXPECT_GT(found[0], 250);
    EXPECT_GT(found[1], 250);
}

TEST(StopStrings, KeptSpecialTokensAreSearchedOnlyWhenKept) {
    const tpx::Tokenizer tok = tpx::Tokenizer::load(kTokenizer);
    const std::vector<int32_t> out = {2046, 2744, 0, 2680};  // " Returns", "andom", <|begin_of_text|>, "width"
    const tpx::StopStrings across({"andom<|begin"});
    EXPECT_FALSE(across.reached(tok, out, /*skip_special_tokens=*/true));
    EXPECT_TRUE(across.reached(tok, out, /*skip_special_tokens=*/false));
    const tpx::StopStrings joined({"andomwidth"});  // the text with the special token left out
    EXPECT_TRUE(joined.reached(tok, out, /*skip_special_tokens=*/true));
    EXPECT_FALSE(joined.reached(tok, out, /*skip_special_tokens=*/false));
}

// A character split over two tokens (tiny-text's 140 and 103: the two bytes of "Ψ") decodes as
// U+FFFD until its second byte comes. A stop string is not matched against that placeholder (it
// was: a stop ending in U+FFFD cut the output one token early, before a character it never held).
TEST(StopStrings, AnUnfinishedCharacterIsNotSearched) {
    const tpx::Tokenizer tok = tpx::Tokenizer::load(kTokenizer);
    ASSERT_EQ(tok.decode({2046, 140}, true), " Returns\xEF\xBF\xBD");  // HF's decode (npm tokenizers)
    ASSERT_EQ(tok.decode({2046, 140, 103}, true), " Returns\xCE\xA8");
    const tpx::StopStrings placeholder({"s\xEF\xBF\xBD"}), psi({"s\xCE\xA8"});
    EXPECT_FALSE(placeholder.reached(tok, {2046, 140}));
    EXPECT_FALSE(placeholder.reached(tok, {2046, 140, 103}));
    EXPECT_FALSE(psi.reached(tok, {2046, 140}));
    EXPECT_TRUE(psi.reached(tok, {2046, 140, 103}));
    EXPECT_EQ(tpx::without_unfinished_char("a\xEF\xBF\xBD\xEF\xBF\xBD"), "a");
    EXPECT_EQ(tpx::without_unfinished_char("\xEF\xBF\xBD" "b"), "\xEF\xBF\xBD" "b");  // a placeholder inside the text stays
}

// min_tokens' bound: a match ending at `ends_after` bytes (inside the first tokens' text) is
// passed over, one ending a byte later is found, and an earlier match does not hide a later one.
TEST(StopStrings, MatchesEndingWithinTheFirstBytesArePassedOver) {
    const tpx::StopStrings stops({"ab", "xyz"});
    const std::string text = "ab-ab-xyz";
    EXPECT_EQ(stops.first_match(text, 0).at, 0u);
    EXPECT_EQ(stops.first_match(text, 1).at, 0u);   // "ab" ends at 2, past 1
    EXPECT_EQ(stops.first_match(text, 2).at, 3u);   // the first "ab" ends at 2: passed over
    EXPECT_EQ(stops.first_match(text, 5).at, 6u);   // both "ab" passed over: "xyz"
    EXPECT_EQ(*stops.first_match(text, 5).stop, "xyz");
    EXPECT_EQ(stops.first_match(text, 9).stop, nullptr);
}
