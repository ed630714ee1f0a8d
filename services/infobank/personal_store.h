// The personal data store of the information bank (issue 6): events about a
// person (`event.data_subject()`), kept per person and encrypted at rest.
//
// Key hierarchy:
//   master key  <dir>/master.key, 32 random bytes, mode 0600 (created
//               atomically on first Open; a key file readable by group or
//               others is refused with FAILED_PRECONDITION).
//   data key    one per person, 32 random bytes (RAND_bytes), stored only
//               wrapped: AES-256-GCM under the master key, AAD = "cityos.pds.key:"
//               + data_subject.
//   record      the serialized event, AES-256-GCM under the person's data key,
//               fresh random 96-bit nonce, AAD = data_subject + NUL + record id.
// Deletion (crypto-shredding) deletes the wrapped data key row and the
// ciphertexts and keeps a tombstone; copies of the ciphertexts made earlier
// (backups) stay unreadable because no key able to decrypt them remains.
#ifndef CITYOS_SERVICES_INFOBANK_PERSONAL_STORE_H_
#define CITYOS_SERVICES_INFOBANK_PERSONAL_STORE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cityos/clock.h"
#include "cityos/event/v1/event.pb.h"

namespace cityos::infobank {

class PersonalStore {  // SQLite file <dir>/personal.db + master key <dir>/master.key (0600)
 public:
  // Opens (creating if missing) the store in `dir` (created 0700). `clock`
  // null = real clock. FAILED_PRECONDITION (naming `chmod 600`) when the
  // master key file is readable by group or others; DATA_LOSS when it is not
  // 32 bytes.
  static absl::StatusOr<std::unique_ptr<PersonalStore>> Open(const std::string& dir,
                                                             Clock* clock);
  // Keeps an event about `event.data_subject()` encrypted with that person's data key
  // (AES-256-GCM, created on first use, wrapped by the master key). INVALID_ARGUMENT without a
  // data_subject. FAILED_PRECONDITION if the person's data was deleted (key destroyed):
  // nothing is stored for them any more. Thread-safe.
  virtual absl::Status Put(const event::v1::Event& event) = 0;
  // Everything kept about the person, decrypted, oldest first. NOT_FOUND
  // "deleted" after Delete; an empty list for a person never seen. DATA_LOSS
  // naming the record when a ciphertext fails authentication.
  virtual absl::StatusOr<std::vector<event::v1::Event>> Export(std::string_view data_subject) = 0;
  // Crypto-shredding: destroys the person's data key (and deletes the ciphertexts); returns how
  // many records became unreadable. Afterwards Export returns NOT_FOUND "deleted".
  // Deleting again returns 0. INVALID_ARGUMENT for an empty data_subject.
  virtual absl::StatusOr<uint64_t> Delete(std::string_view data_subject) = 0;
  // Whether the person's data was deleted (a tombstone exists).
  virtual absl::StatusOr<bool> IsDeleted(std::string_view data_subject) = 0;
  virtual ~PersonalStore() = default;
};

}  // namespace cityos::infobank

#endif  // CITYOS_SERVICES_INFOBANK_PERSONAL_STORE_H_
