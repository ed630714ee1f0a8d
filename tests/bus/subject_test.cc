#include "cityos/subject.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "bus/subject_trie.h"

namespace cityos {
namespace {

using ::testing::HasSubstr;

struct MatchCase {
  const char* pattern;
  const char* subject;
  bool match;
};

TEST(SubjectMatches, Table) {
  const MatchCase cases[] = {
      {"carbon.meter.reading", "carbon.meter.reading", true},
      {"carbon.meter.reading", "carbon.meter.readings", false},
      {"carbon.meter.reading", "carbon.meter", false},
      {"carbon.meter", "carbon.meter.reading", false},
      {"carbon.*.reading", "carbon.meter.reading", true},
      {"carbon.*.reading", "carbon.meter.x.reading", false},
      {"carbon.*", "carbon", false},
      {"*", "carbon", true},
      {"*", "carbon.meter", false},
      {"*.*", "a.b", true},
      {"carbon.>", "carbon.meter", true},
      {"carbon.>", "carbon.meter.reading.quzhou.kecheng", true},
      {"carbon.>", "carbon", false},
      {"carbon.>", "mobility.trip", false},
      {">", "carbon", true},
      {">", "a.b.c", true},
      {"*.meter.>", "carbon.meter.reading.quzhou", true},
      {"*.meter.>", "carbon.meter", false},
      {"carbon.meter.*.quzhou.>", "carbon.meter.reading.quzhou.kecheng", true},
      {"carbon.meter.*.quzhou.>", "carbon.meter.reading.quzhou", false},
      {"a.b", "a.bc", false},
      {"ab", "a", false},
  };
  for (const MatchCase& c : cases) {
    EXPECT_EQ(SubjectMatches(c.pattern, c.subject), c.match)
        << c.pattern << " vs " << c.subject;
  }
}

TEST(ValidateSubject, ErrorsNameTheToken) {
  EXPECT_TRUE(ValidateSubject("carbon.meter.reading.quzhou.kecheng").ok());
  EXPECT_THAT(ValidateSubject("").message(), HasSubstr("subject is empty"));
  EXPECT_THAT(ValidateSubject(".a").message(), HasSubstr("token 1 is empty"));
  EXPECT_THAT(ValidateSubject("a.").message(), HasSubstr("token 2 is empty"));
  EXPECT_THAT(ValidateSubject("a b").message(), HasSubstr("illegal character byte 0x20"));
  EXPECT_THAT(ValidateSubject("a.b/c").message(), HasSubstr("token 2 \"b/c\" has the illegal character '/'"));
  EXPECT_THAT(ValidateSubject("a.*").message(), HasSubstr("token 2 is the wildcard \"*\""));
  EXPECT_THAT(ValidateSubject("a.>").message(), HasSubstr("only in subscription patterns"));
  EXPECT_THAT(ValidateSubject("a.b*").message(), HasSubstr("illegal character '*'"));
  EXPECT_THAT(ValidateSubject(std::string(257, 'a')).message(), HasSubstr("too long"));
  EXPECT_THAT(ValidateSubject("a." + std::string(65, 'b')).message(),
              HasSubstr("token 2 is too long"));
  EXPECT_THAT(ValidateSubject("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q").message(),
              HasSubstr("too many tokens: 17"));
  EXPECT_TRUE(ValidateSubject("a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p").ok());
}

// The validator as it was before the single-pass rewrite (three scans of the
// subject), kept verbatim as the reference the new one must agree with.
namespace reference {

bool LegalTokenChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '-';
}

absl::Status TokenError(std::string_view s, bool pattern, size_t pos, std::string_view t) {
  const char* what = pattern ? "pattern" : "subject";
  if (t.empty()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s \"%s\": token %d is empty", what, s, pos));
  }
  if (t == "*" || t == ">") {
    if (!pattern) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "subject \"%s\": token %d is the wildcard \"%s\", which is allowed only in "
          "subscription patterns",
          s, pos, t));
    }
    return absl::InvalidArgumentError(absl::StrFormat(
        "pattern \"%s\": token %d \">\" must be the last token", s, pos));
  }
  if (t.size() > kMaxSubjectTokenLength) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s \"%s\": token %d is too long: %d characters, at most %d",
                        what, s, pos, t.size(), kMaxSubjectTokenLength));
  }
  for (char ch : t) {
    if (!LegalTokenChar(ch)) {
      unsigned char c = static_cast<unsigned char>(ch);
      std::string shown = (c >= 0x21 && c < 0x7f) ? absl::StrFormat("'%c'", c)
                                                   : absl::StrFormat("byte 0x%02x", c);
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s \"%s\": token %d \"%s\" has the illegal character %s (allowed: A-Z a-z "
          "0-9 _ -)",
          what, s, pos, t, shown));
    }
  }
  return absl::InternalError("subject token check disagrees with its error report");
}

absl::Status Validate(std::string_view s, bool pattern) {
  const char* what = pattern ? "pattern" : "subject";
  if (s.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty", what));
  if (s.size() > kMaxSubjectLength) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s...\" is too long: %d bytes, at most %d", what, s.substr(0, 32), s.size(),
        kMaxSubjectLength));
  }
  size_t tokens = 1;
  for (char c : s) tokens += c == '.';
  if (tokens > kMaxSubjectTokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" has too many tokens: %d, at most %d", what, s, tokens,
        kMaxSubjectTokens));
  }
  size_t start = 0, pos = 1;
  while (true) {
    size_t dot = s.find('.', start);
    bool last = dot == std::string_view::npos;
    std::string_view t = s.substr(start, last ? std::string_view::npos : dot - start);
    bool ok = !t.empty() && t.size() <= kMaxSubjectTokenLength;
    if (ok && t.size() == 1 && (t[0] == '*' || t[0] == '>')) {
      ok = pattern && (t[0] == '*' || last);
    } else {
      for (char c : t) ok = ok && LegalTokenChar(c);
    }
    if (!ok) return TokenError(s, pattern, pos, t);
    if (last) return absl::OkStatus();
    start = dot + 1;
    ++pos;
  }
}

}  // namespace reference

// Code and message of ValidateSubject / ValidatePattern equal the reference's.
::testing::AssertionResult AgreesWithReference(std::string_view s) {
  for (bool pattern : {false, true}) {
    absl::Status want = reference::Validate(s, pattern);
    absl::Status got = pattern ? ValidatePattern(s) : ValidateSubject(s);
    if (got.code() != want.code() || got.message() != want.message()) {
      return ::testing::AssertionFailure()
             << (pattern ? "pattern" : "subject") << " \"" << absl::CHexEscape(absl::string_view(s.data(), s.size()))
             << "\": got " << got << ", reference " << want;
    }
  }
  return ::testing::AssertionSuccess();
}

TEST(ValidateSubject, AgreesWithReferenceOnTableCases) {
  const std::string cases[] = {
      "carbon.meter.reading.quzhou.kecheng", "", ".a", "a.", "a b", "a.b/c", "a.*", "a.>",
      "a.b*", std::string(256, 'a'), std::string(257, 'a'), "a." + std::string(65, 'b'),
      "a." + std::string(64, 'b'), "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q",
      "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", "carbon.*.reading", "carbon.>", ">", "*",
      "carbon.>.reading", "carbon.me*", "carbon..x", "carbon.meter.*.quzhou.>", "*.*",
      "*.meter.>", ".", "..", "a..b", "*>", ">>", "**", "a.>.>", "a.*.*", "carbon.me$ter",
      "carbon." + std::string(300, 'a'), "carbon.a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p",
      std::string("a\0b", 3), "\xc3\xa9t\xc3\xa9", "a.\x7f", "a.\t", "A-Z_0-9.x",
      ".a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p", "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.",
  };
  for (const std::string& s : cases) EXPECT_TRUE(AgreesWithReference(s));
}

// Random and adversarial subjects: random tokens over an alphabet with
// separators, wildcards, UTF-8 and control bytes and spaces, with lengths
// around the token (64), total (256) and token-count (16) limits.
TEST(ValidateSubject, AgreesWithReferenceOnRandomSubjects) {
  std::mt19937_64 rng(20261129);
  const std::string legal =
      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
  const std::string odd = std::string(".*>/ $#+\t\n\r\x7f\xc3\xa9\xe4\xb8\xad\xff\x80", 19) +
                          std::string(1, '\0') + "\x01\x1f\x20\x21\x7e";
  auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
  auto token = [&]() -> std::string {
    switch (pick(10)) {
      case 0: return "";
      case 1: return "*";
      case 2: return ">";
      case 3: return std::string(63 + pick(3), legal[pick(legal.size())]);  // 63..65
      case 4: {  // mostly legal with one odd byte somewhere
        std::string t(1 + pick(8), 'x');
        for (char& c : t) c = legal[pick(legal.size())];
        t[pick(t.size())] = odd[pick(odd.size())];
        return t;
      }
      case 5: {  // any byte at all
        std::string t(pick(6), 'x');
        for (char& c : t) c = static_cast<char>(pick(256));
        return t;
      }
      default: {
        std::string t(1 + pick(12), 'x');
        for (char& c : t) c = legal[pick(legal.size())];
        return t;
      }
    }
  };
  size_t ok_subjects = 0, ok_patterns = 0;
  // Every kind of error must come up, or some rule goes untested.
  const char* const kinds[] = {"is empty",         "is too long: ",    "has too many tokens",
                               "must be the last", "illegal character", "...\" is too long"};
  size_t seen[std::size(kinds)] = {};
  for (int i = 0; i < 120000; ++i) {
    std::string s;
    int mode = static_cast<int>(pick(4));
    // Token counts spread over 1..20, so that 15, 16 and 17 come up often.
    size_t n = mode == 0 ? 14 + pick(5) : 1 + pick(20);
    for (size_t k = 0; k < n; ++k) {
      if (k > 0) s += '.';
      s += token();
    }
    if (mode == 1) {  // pad or cut to the total-length boundary 255..257
      size_t want = 255 + pick(3);
      while (s.size() < want) s += (pick(9) == 0 ? '.' : legal[pick(legal.size())]);
      s.resize(want);
    } else if (mode == 2 && !s.empty()) {  // random single-byte mutation
      s[pick(s.size())] = static_cast<char>(pick(256));
    }
    ASSERT_TRUE(AgreesWithReference(s));
    ok_subjects += ValidateSubject(s).ok();
    absl::Status p = ValidatePattern(s);
    ok_patterns += p.ok();
    for (size_t k = 0; k < std::size(kinds); ++k) {
      seen[k] += std::string(p.message()).find(kinds[k]) != std::string::npos;
    }
  }
  for (size_t k = 0; k < std::size(kinds); ++k) {
    EXPECT_GT(seen[k], 100u) << "too few random patterns with \"" << kinds[k] << "\"";
  }
  // The generator must reach both outcomes, or the comparison says little.
  EXPECT_GT(ok_subjects, 1000u);
  EXPECT_GT(ok_patterns, ok_subjects);
}

TEST(ValidatePattern, WildcardRules) {
  EXPECT_TRUE(ValidatePattern("carbon.*.reading").ok());
  EXPECT_TRUE(ValidatePattern("carbon.>").ok());
  EXPECT_TRUE(ValidatePattern(">").ok());
  EXPECT_THAT(ValidatePattern("carbon.>.reading").message(), HasSubstr("must be the last token"));
  EXPECT_THAT(ValidatePattern("carbon.me*").message(), HasSubstr("illegal character '*'"));
  EXPECT_THAT(ValidatePattern("carbon..x").message(), HasSubstr("token 2 is empty"));
}

TEST(PatternsOverlap, Table) {
  EXPECT_TRUE(PatternsOverlap("carbon.>", "carbon.meter"));
  EXPECT_TRUE(PatternsOverlap("carbon.*", "*.meter"));
  EXPECT_TRUE(PatternsOverlap(">", "a"));
  EXPECT_FALSE(PatternsOverlap("carbon.>", "carbon"));
  EXPECT_FALSE(PatternsOverlap("carbon.>", "mobility.>"));
  EXPECT_FALSE(PatternsOverlap("a.*", "a.b.c"));
  EXPECT_TRUE(PatternsOverlap("a.*.c", "a.b.*"));
}

// The trie must agree with the reference matcher on every pattern.
TEST(SubjectTrie, AgreesWithReferenceMatcherOnRandomPatterns) {
  std::mt19937 rng(42);
  const char* tokens[] = {"a", "b", "c", "meter"};
  auto random_subject = [&](bool pattern) {
    int n = 1 + static_cast<int>(rng() % 4);
    std::string s;
    for (int i = 0; i < n; ++i) {
      if (i > 0) s += '.';
      int r = static_cast<int>(rng() % 6);
      if (pattern && r == 4) {
        s += '*';
      } else if (pattern && r == 5 && i == n - 1) {
        s += '>';
      } else {
        s += tokens[rng() % 4];
      }
    }
    return s;
  };
  std::vector<std::string> patterns;
  bus_internal::SubjectTrie<int> trie;
  for (int i = 0; i < 300; ++i) {
    patterns.push_back(random_subject(true));
    ASSERT_TRUE(ValidatePattern(patterns.back()).ok()) << patterns.back();
    trie.Insert(patterns.back(), i);
  }
  EXPECT_EQ(trie.size(), 300u);
  for (int k = 0; k < 2000; ++k) {
    std::string subject = random_subject(false);
    std::vector<int> got;
    trie.Match(subject, &got);
    std::sort(got.begin(), got.end());
    std::vector<int> want;
    for (int i = 0; i < 300; ++i) {
      if (SubjectMatches(patterns[i], subject)) want.push_back(i);
    }
    ASSERT_EQ(got, want) << subject;
  }
}

}  // namespace
}  // namespace cityos
