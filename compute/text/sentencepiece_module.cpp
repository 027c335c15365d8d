// The one place orrery calls libsentencepiece, built as a module of its own
// that sentencepiece_tokenizer.cpp loads with dlopen (RTLD_LOCAL |
// RTLD_DEEPBIND). Debian's libsentencepiece carries and exports its own copy
// of protobuf-lite, and libtorch loads libprotobuf.so.32 (for ONNX): linked
// into one binary, libprotobuf's start-up binds to sentencepiece's copy and
// crashes before main. Loaded locally and deep-bound, each keeps its own.
// A C interface, so nothing of either protobuf crosses it. Nothing here may
// write to std::cerr or std::cout: deep-bound, the module's streams are not
// the program's (training therefore runs Debian's spm_train as a process).

#include <sentencepiece_processor.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

void copy_error(const std::string& text, char* error, std::size_t capacity) {
  if (capacity == 0) return;
  std::strncpy(error, text.c_str(), capacity - 1);
  error[capacity - 1] = '\0';
}

}  // namespace

extern "C" {

void* orrery_spm_load(const char* path, char* error, std::size_t capacity) {
  auto* p = new sentencepiece::SentencePieceProcessor();
  const auto status = p->Load(path);
  if (!status.ok()) {
    copy_error(status.ToString(), error, capacity);
    delete p;
    return nullptr;
  }
  return p;
}

void orrery_spm_free(void* processor) { delete static_cast<sentencepiece::SentencePieceProcessor*>(processor); }

// The ids of `text` into `out` (at most `capacity`): their count, which may
// exceed `capacity` (call again with room), or -1 with `error` set.
long orrery_spm_encode(void* processor, const char* text, std::size_t length, int* out, std::size_t capacity, char* error,
                       std::size_t error_capacity) {
  std::vector<int> ids;
  const auto status = static_cast<sentencepiece::SentencePieceProcessor*>(processor)->Encode(std::string(text, length), &ids);
  if (!status.ok()) {
    copy_error(status.ToString(), error, error_capacity);
    return -1;
  }
  for (std::size_t i = 0; i < ids.size() && i < capacity; ++i) out[i] = ids[i];
  return static_cast<long>(ids.size());
}

int orrery_spm_size(void* processor) { return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->GetPieceSize(); }
int orrery_spm_bos(void* processor) { return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->bos_id(); }
int orrery_spm_eos(void* processor) { return static_cast<sentencepiece::SentencePieceProcessor*>(processor)->eos_id(); }

// Piece `id`'s text into `out` (NUL-terminated, cut to `capacity`) and its
// kind: 0 normal, 1 control, 2 byte, 3 unknown.
int orrery_spm_piece(void* processor, int id, char* out, std::size_t capacity) {
  const auto* p = static_cast<sentencepiece::SentencePieceProcessor*>(processor);
  copy_error(p->IdToPiece(id), out, capacity);
  return p->IsControl(id) ? 1 : p->IsByte(id) ? 2 : p->IsUnknown(id) ? 3 : 0;
}

}
