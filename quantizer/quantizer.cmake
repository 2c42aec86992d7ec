# tessera_quantizer: recipes, RTN / error-minimising search quantization, calibration (imatrix).
add_library(tessera_quantizer STATIC
  ${CMAKE_CURRENT_LIST_DIR}/quantize.cc
  ${CMAKE_CURRENT_LIST_DIR}/recipes.cc
  ${CMAKE_CURRENT_LIST_DIR}/search.cc
  ${CMAKE_CURRENT_LIST_DIR}/nl4.cc
  ${CMAKE_CURRENT_LIST_DIR}/imatrix.cc
  ${CMAKE_CURRENT_LIST_DIR}/gptq.cc
  ${CMAKE_CURRENT_LIST_DIR}/awq.cc
  ${CMAKE_CURRENT_LIST_DIR}/rotate.cc
)
# tessera_runtime (the forward pass) runs the source model for calibration.
target_link_libraries(tessera_quantizer PUBLIC tessera_runtime tessera_kernels tessera_formats tessera_core)

# tessera_allocate: --allocate measured (quantizes candidates and measures them with verify's KLD).
add_library(tessera_allocate STATIC ${CMAKE_CURRENT_LIST_DIR}/allocate.cc)
target_link_libraries(tessera_allocate PUBLIC tessera_verify tessera_quantizer tessera_runtime tessera_core)
