# ONNX import (converter/onnx_*.cc): parses ModelProto with the ONNX protobuf library (libonnx-dev).
find_package(Protobuf REQUIRED)
find_package(ONNX CONFIG REQUIRED)
add_library(tessera_onnx_converter STATIC ${CMAKE_CURRENT_LIST_DIR}/onnx_model.cc ${CMAKE_CURRENT_LIST_DIR}/onnx_converter.cc)
target_link_libraries(tessera_onnx_converter PUBLIC tessera_converter tessera_formats tessera_core
                      onnx_proto protobuf::libprotobuf)
