#include "cityos/subject.h"

#include <array>
#include <vector>

#include "absl/strings/str_format.h"

namespace cityos {
namespace {

std::vector<std::string_view> SplitTokens(std::string_view s) {
  std::vector<std::string_view> tokens;
  size_t start = 0;
  while (true) {
    size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      tokens.push_back(s.substr(start));
      return tokens;
    }
    tokens.push_back(s.substr(start, dot - start));
    start = dot + 1;
  }
}

// Character classes of subject bytes, one table look-up per byte.
enum CharClass : unsigned char { kOther = 0, kLegal = 1, kDot = 2, kWildcard = 3 };

constexpr std::array<unsigned char, 256> MakeCharClasses() {
  std::array<unsigned char, 256> t{};
  for (int c = 0; c < 256; ++c) {
    bool legal = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '-';
    t[c] = legal ? kLegal : c == '.' ? kDot : (c == '*' || c == '>') ? kWildcard : kOther;
  }
  return t;
}
constexpr std::array<unsigned char, 256> kCharClass = MakeCharClasses();

bool LegalTokenChar(char c) { return kCharClass[static_cast<unsigned char>(c)] == kLegal; }

// Describes what is wrong with the token `t` (1-based position `pos`) of
// `s`; only called once a problem is known, so it may be slow.
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

// One pass over the bytes, no allocation: this runs for every published
// event. Each token's legal characters are skipped with one table look-up per
// byte; a token that stops at anything but a separator or the end is checked
// for the wildcard rules. After the first bad token the rest is only counted
// for separators: "too many tokens" is reported before a token's problem.
absl::Status Validate(std::string_view s, bool pattern) {
  const char* what = pattern ? "pattern" : "subject";
  if (s.empty()) return absl::InvalidArgumentError(absl::StrFormat("%s is empty", what));
  if (s.size() > kMaxSubjectLength) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s...\" is too long: %d bytes, at most %d", what, s.substr(0, 32), s.size(),
        kMaxSubjectLength));
  }
  const unsigned char* const begin = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned char* const end = begin + s.size();
  const unsigned char* start = begin;  // of the current token
  size_t tokens = 1;                   // tokens started so far
  std::string_view bad;                // the first bad token, if any
  size_t bad_pos = 0;                  // its position (1-based); 0 = none
  while (true) {
    const unsigned char* p = start;
    while (p != end && kCharClass[*p] == kLegal) ++p;
    bool ok;
    if (p == end || *p == '.') {
      size_t len = static_cast<size_t>(p - start);
      ok = len != 0 && len <= kMaxSubjectTokenLength;
    } else {
      // A byte other than [A-Za-z0-9_-]: valid only as a whole-token wildcard.
      bool last = p + 1 == end;
      ok = p == start && kCharClass[*p] == kWildcard && (last || p[1] == '.') && pattern &&
           (*p == '*' || last);
      if (ok) {
        ++p;
      } else {
        while (p != end && *p != '.') ++p;
      }
    }
    if (!ok) {
      bad = std::string_view(reinterpret_cast<const char*>(start),
                             static_cast<size_t>(p - start));
      bad_pos = tokens;
      for (const unsigned char* q = p; q != end; ++q) tokens += *q == '.';
      break;
    }
    if (p == end) break;
    start = p + 1;
    ++tokens;
  }
  if (tokens > kMaxSubjectTokens) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s \"%s\" has too many tokens: %d, at most %d", what, s, tokens,
        kMaxSubjectTokens));
  }
  if (bad_pos != 0) return TokenError(s, pattern, bad_pos, bad);
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateSubject(std::string_view subject) {
  return Validate(subject, /*pattern=*/false);
}

absl::Status ValidatePattern(std::string_view pattern) {
  return Validate(pattern, /*pattern=*/true);
}

bool SubjectMatches(std::string_view pattern, std::string_view subject) {
  size_t p = 0, s = 0;
  while (true) {
    size_t pe = pattern.find('.', p);
    size_t se = subject.find('.', s);
    std::string_view pt = pattern.substr(p, pe == std::string_view::npos ? pe : pe - p);
    if (pt == ">") return s <= subject.size() && s != std::string_view::npos;
    std::string_view st = subject.substr(s, se == std::string_view::npos ? se : se - s);
    if (pt != "*" && pt != st) return false;
    bool p_end = pe == std::string_view::npos, s_end = se == std::string_view::npos;
    if (p_end || s_end) return p_end && s_end;
    p = pe + 1;
    s = se + 1;
  }
}

bool PatternsOverlap(std::string_view a, std::string_view b) {
  std::vector<std::string_view> ta = SplitTokens(a);
  std::vector<std::string_view> tb = SplitTokens(b);
  size_t i = 0;
  for (; i < ta.size() && i < tb.size(); ++i) {
    if (ta[i] == ">" || tb[i] == ">") return true;
    if (ta[i] != "*" && tb[i] != "*" && ta[i] != tb[i]) return false;
  }
  if (ta.size() == tb.size()) return true;
  // One ran out of tokens: only a trailing ">" on the longer one could still
  // match, and it needs at least one token, which the shorter one lacks.
  return false;
}

}  // namespace cityos
