// dali-video's clip reader: a TensorFlow iterator's readers close when the iterator is deleted.
//
// DALI's TF dataset (dali_tf_plugin/dali_dataset_op.cc) gives each iterator a pipeline of its own: it
// deserializes the dataset's pipeline and builds it (daliPipelineBuild, DALI's C API, which makes the
// operators on the calling thread), and the iterator's destructor destroys it (daliPipelineDestroy),
// which waits for the operator's run in progress. A run that waits for a store that does not answer
// would keep the deletion (`del it`, the end of `fit` while the dataset lives on) waiting io_timeout,
// and nothing of TensorFlow's or DALI's tells the operator. Every iterator of one dataset builds the
// same serialized pipeline, so the dataset's instance argument cannot tell them apart; the pipeline
// handle can.
//
// So the TF plugin's two calls are routed through here: TF loads op libraries with RTLD_NOW, which
// fills the plugin's GOT slot of each function at load; each slot is rewritten to point here, where a
// build records the readers it made (a thread-local their constructor reads) under its pipeline and a
// destroy closes that pipeline's readers, then calls DALI's own. Only the plugin's calls pass here
// (DALI's Python pipelines do not use the C API). Nothing is rewritten unless both slots are found,
// each of them holds DALI's own function (as this library links it) and lies in a writable page
// outside RELRO; otherwise an iterator's deletion waits as before.
// Included once, by clip_reader.cc (one translation unit).
#pragma once

#include <elf.h>
#include <link.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "dali/dali.h"
#include "storage.h"

namespace dali_video {

using PipelineCall = daliResult_t (*)(daliPipeline_h);

// The readers of each routed build, by pipeline handle. Never destroyed: the plugin may destroy a
// pipeline at exit after this library's static objects are gone.
struct Pipelines {
  std::mutex lock;
  std::unordered_map<const void *, std::vector<std::weak_ptr<Closing>>> readers;
};

Pipelines &pipelines() {
  static Pipelines *p = new Pipelines;
  return *p;
}

thread_local const void *t_building = nullptr;  // the pipeline daliPipelineBuild builds on this thread
std::atomic<PipelineCall> g_dali_build{nullptr}, g_dali_destroy{nullptr};  // DALI's own, set before any slot points here

// A reader made by a routed daliPipelineBuild closes when its pipeline is destroyed.
void enroll_built(const std::shared_ptr<Closing> &closing) {
  if (!t_building) return;
  Pipelines &p = pipelines();
  std::lock_guard<std::mutex> hold(p.lock);
  p.readers[t_building].push_back(closing);
}

daliResult_t build_pipeline(daliPipeline_h pipeline) {
  struct Building {
    explicit Building(const void *p) { t_building = p; }
    ~Building() { t_building = nullptr; }
  } building(pipeline);
  return g_dali_build.load()(pipeline);
}

daliResult_t destroy_pipeline(daliPipeline_h pipeline) {
  std::vector<std::weak_ptr<Closing>> readers;
  {
    Pipelines &p = pipelines();
    std::lock_guard<std::mutex> hold(p.lock);
    auto it = p.readers.find(pipeline);
    if (it != p.readers.end()) {
      readers.swap(it->second);
      p.readers.erase(it);
    }
  }
  for (auto &r : readers)
    if (auto closing = r.lock()) closing->set = true;  // the run in progress stops waiting for reads
  return g_dali_destroy.load()(pipeline);
}

#if defined(__x86_64__)
constexpr uint32_t kJumpSlot = R_X86_64_JUMP_SLOT;
#elif defined(__aarch64__)
constexpr uint32_t kJumpSlot = R_AARCH64_JUMP_SLOT;
#else
constexpr uint32_t kJumpSlot = 0;  // elsewhere nothing is routed
#endif

// The TF plugin's GOT slots of the two functions, when it is loaded and each is found once, writable.
struct Slots {
  void **build = nullptr, **destroy = nullptr;
  int found = 0;  // relocations of either name: routed only with exactly one jump slot each
};

// One library's slots of the two functions (see Slots).
void slots_of(dl_phdr_info *info, Slots &slots) {
  const ElfW(Addr) base = info->dlpi_addr;
  const ElfW(Dyn) *dyn = nullptr;
  for (int i = 0; i < info->dlpi_phnum; ++i)
    if (info->dlpi_phdr[i].p_type == PT_DYNAMIC) dyn = reinterpret_cast<const ElfW(Dyn) *>(base + info->dlpi_phdr[i].p_vaddr);
  if (!dyn) return;
  // The loader relocates these addresses in place on most architectures, not on all.
  auto at = [base](ElfW(Addr) a) { return a < base ? a + base : a; };
  const ElfW(Sym) *symbols = nullptr;
  const char *names = nullptr;
  const ElfW(Rela) *tables[2] = {nullptr, nullptr};  // the PLT's relocations, then the others
  size_t bytes[2] = {0, 0};
  bool rela = false;
  for (; dyn->d_tag != DT_NULL; ++dyn) {
    if (dyn->d_tag == DT_SYMTAB) symbols = reinterpret_cast<const ElfW(Sym) *>(at(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_STRTAB) names = reinterpret_cast<const char *>(at(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_JMPREL) tables[0] = reinterpret_cast<const ElfW(Rela) *>(at(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_PLTRELSZ) bytes[0] = dyn->d_un.d_val;
    if (dyn->d_tag == DT_PLTREL) rela = dyn->d_un.d_val == DT_RELA;
    if (dyn->d_tag == DT_RELA) tables[1] = reinterpret_cast<const ElfW(Rela) *>(at(dyn->d_un.d_ptr));
    if (dyn->d_tag == DT_RELASZ) bytes[1] = dyn->d_un.d_val;
  }
  if (!symbols || !names || !tables[0] || !rela) return;
  for (int t = 0; t < 2; ++t) {
    for (size_t k = 0; tables[t] && k < bytes[t] / sizeof(ElfW(Rela)); ++k) {
      const ElfW(Rela) &r = tables[t][k];
      if (t == 1 && &r >= tables[0] && &r < tables[0] + bytes[0] / sizeof(ElfW(Rela))) continue;  // the PLT's again
      const char *name = names + symbols[ELF64_R_SYM(r.r_info)].st_name;
      void ***slot = std::strcmp(name, "daliPipelineBuild") == 0     ? &slots.build
                     : std::strcmp(name, "daliPipelineDestroy") == 0 ? &slots.destroy
                                                                      : nullptr;
      if (!slot) continue;
      ++slots.found;  // any relocation but the PLT's one jump slot each (a pointer taken) forbids routing
      const ElfW(Addr) address = base + r.r_offset;
      bool writable = false;
      for (int i = 0; i < info->dlpi_phnum; ++i) {
        const ElfW(Phdr) &p = info->dlpi_phdr[i];
        const bool inside = address >= base + p.p_vaddr && address + sizeof(void *) <= base + p.p_vaddr + p.p_memsz;
        if (inside && p.p_type == PT_LOAD) writable = p.p_flags & PF_W;
        if (inside && p.p_type == PT_GNU_RELRO) {
          writable = false;
          break;
        }
      }
      if (t == 0 && ELF64_R_TYPE(r.r_info) == kJumpSlot && writable) *slot = reinterpret_cast<void **>(address);
    }
  }
}

// Every loaded libdali_tf*'s slots: routed only when exactly one library has any (a plugin loaded twice,
// or another DALI's, is left alone).
struct Plugins {
  Slots slots;
  int libraries = 0;  // libdali_tf* libraries with relocations of either name
};

int find_slots(dl_phdr_info *info, size_t, void *out) {
  if (!kJumpSlot || !info->dlpi_name || !std::strstr(info->dlpi_name, "libdali_tf")) return 0;
  auto &plugins = *static_cast<Plugins *>(out);
  Slots slots;
  slots_of(info, slots);
  if (slots.found) {
    ++plugins.libraries;
    plugins.slots = slots;
  }
  return 0;  // on to the next library
}

}  // namespace dali_video

// Python, once DALI's TF plugin is loaded (dataset.py): route the plugin's daliPipelineBuild and
// daliPipelineDestroy through the reader (see above). 1 when they are routed (now or before), else 0.
extern "C" int dali_video_route_tf_iterators() {
  static std::mutex lock;
  static bool routed = false;
  std::lock_guard<std::mutex> hold(lock);
  if (routed) return 1;
  dali_video::Plugins plugins;
  dl_iterate_phdr(dali_video::find_slots, &plugins);
  const dali_video::Slots &slots = plugins.slots;
  if (plugins.libraries != 1 || slots.found != 2 || !slots.build || !slots.destroy) return 0;
  void *build = __atomic_load_n(slots.build, __ATOMIC_SEQ_CST), *destroy = __atomic_load_n(slots.destroy, __ATOMIC_SEQ_CST);
  // Each holds DALI's function as this library links it (TF loads op libraries with RTLD_NOW: resolved).
  if (build != reinterpret_cast<void *>(&daliPipelineBuild) || destroy != reinterpret_cast<void *>(&daliPipelineDestroy))
    return 0;
  dali_video::g_dali_build.store(reinterpret_cast<dali_video::PipelineCall>(build));
  dali_video::g_dali_destroy.store(reinterpret_cast<dali_video::PipelineCall>(destroy));
  // Destroy first: until build is routed too, a destroy finds no readers and only calls DALI's.
  __atomic_store_n(slots.destroy, reinterpret_cast<void *>(&dali_video::destroy_pipeline), __ATOMIC_SEQ_CST);
  __atomic_store_n(slots.build, reinterpret_cast<void *>(&dali_video::build_pipeline), __ATOMIC_SEQ_CST);
  routed = true;
  return 1;
}
