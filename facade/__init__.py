from services.common import grpc_runtime

grpc_runtime.apply()  # before anything imports grpc
