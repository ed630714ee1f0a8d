// Internal: a trie over subject tokens for matching a subject against many
// patterns without scanning them all. Each level maps a literal token to a
// child, plus one child for `*` and a list for `>`. Matching a subject of k
// tokens visits at most 2^w paths, w = number of `*` levels that exist on the
// way, independent of the number of patterns. Not thread-safe: the bus builds
// immutable tries and swaps them.
#ifndef CITYOS_SRC_BUS_SUBJECT_TRIE_H_
#define CITYOS_SRC_BUS_SUBJECT_TRIE_H_

#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "cityos/subject.h"

namespace cityos::bus_internal {

// Splits a valid subject into tokens. Returns the count, at most
// kMaxSubjectTokens (extra tokens are ignored; callers validate first).
inline size_t SplitSubject(std::string_view s,
                           std::array<std::string_view, kMaxSubjectTokens>* out) {
  size_t n = 0, start = 0;
  while (n < kMaxSubjectTokens) {
    size_t dot = s.find('.', start);
    if (dot == std::string_view::npos) {
      (*out)[n++] = s.substr(start);
      break;
    }
    (*out)[n++] = s.substr(start, dot - start);
    start = dot + 1;
  }
  return n;
}

template <typename T>
class SubjectTrie {
 public:
  // Adds `value` under a valid pattern.
  void Insert(std::string_view pattern, T value) {
    std::array<std::string_view, kMaxSubjectTokens> tokens;
    size_t n = SplitSubject(pattern, &tokens);
    Node* node = &root_;
    for (size_t i = 0; i < n; ++i) {
      std::string_view t = tokens[i];
      if (t == ">") {
        node->rest.push_back(std::move(value));
        ++size_;
        return;
      }
      std::unique_ptr<Node>& child =
          t == "*" ? node->star
                   : node->children[absl::string_view(t.data(), t.size())];
      if (child == nullptr) child = std::make_unique<Node>();
      node = child.get();
    }
    node->here.push_back(std::move(value));
    ++size_;
  }

  // Appends every value whose pattern matches the valid subject `subject`.
  void Match(std::string_view subject, std::vector<T>* out) const {
    std::array<std::string_view, kMaxSubjectTokens> tokens;
    size_t n = SplitSubject(subject, &tokens);
    MatchFrom(&root_, tokens, 0, n, out);
  }

  size_t size() const { return size_; }

 private:
  struct Node {
    absl::flat_hash_map<std::string, std::unique_ptr<Node>> children;
    std::unique_ptr<Node> star;
    std::vector<T> here;  // patterns ending at this node
    std::vector<T> rest;  // patterns "<path>.>" (one or more further tokens)
  };

  static void MatchFrom(const Node* node,
                        const std::array<std::string_view, kMaxSubjectTokens>& tokens,
                        size_t i, size_t n, std::vector<T>* out) {
    if (i == n) {
      out->insert(out->end(), node->here.begin(), node->here.end());
      return;
    }
    // ">" needs at least one more token, which exists since i < n.
    out->insert(out->end(), node->rest.begin(), node->rest.end());
    auto it = node->children.find(absl::string_view(tokens[i].data(), tokens[i].size()));
    if (it != node->children.end()) MatchFrom(it->second.get(), tokens, i + 1, n, out);
    if (node->star != nullptr) MatchFrom(node->star.get(), tokens, i + 1, n, out);
  }

  Node root_;
  size_t size_ = 0;
};

}  // namespace cityos::bus_internal

#endif  // CITYOS_SRC_BUS_SUBJECT_TRIE_H_
